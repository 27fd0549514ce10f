//! TaintToleration: a node's NoSchedule and NoExecute taints must be tolerated (filter); nodes
//! with fewer untolerated PreferNoSchedule taints score higher.

use k8s_openapi::api::core::v1::{Taint, Toleration};

use crate::framework::{Code, Plugin, Rejection, ScoreContext, default_normalize};
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;

/// Whether `toleration` tolerates `taint` (an empty effect or key matches any, operator
/// Exists ignores the value, Equal or empty compares it).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = toleration.key.as_deref()
        && !key.is_empty()
        && key != taint.key
    {
        return false;
    }
    match toleration.operator.as_deref() {
        None | Some("") | Some("Equal") => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        Some("Exists") => true,
        Some(_) => false,
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// The first NoSchedule or NoExecute taint of `taints` that `tolerations` do not tolerate.
pub fn first_untolerated<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints.iter().find(|taint| {
        (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            && !tolerated(tolerations, taint)
    })
}

/// Rejects nodes with a NoSchedule or NoExecute taint the pod does not tolerate.
pub fn filter(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    match first_untolerated(node.taints(), pod.tolerations()) {
        None => Ok(()),
        Some(taint) => Err(Rejection::new(
            Plugin::TaintToleration,
            Code::UnschedulableAndUnresolvable,
            format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or_default()
            ),
        )),
    }
}

/// Scores nodes by their untolerated PreferNoSchedule taints: none scores 100, the most 0.
pub fn score(ctx: &ScoreContext<'_>, nodes: &[&NodeInfo], out: &mut [i64]) -> bool {
    let tolerations: Vec<&Toleration> = ctx
        .pod
        .tolerations()
        .iter()
        .filter(|t| {
            matches!(
                t.effect.as_deref(),
                None | Some("") | Some("PreferNoSchedule")
            )
        })
        .collect();
    for (node, score) in nodes.iter().zip(out.iter_mut()) {
        *score = node
            .taints()
            .iter()
            .filter(|taint| {
                taint.effect == "PreferNoSchedule"
                    && !tolerations.iter().any(|t| tolerates(t, taint))
            })
            .count() as i64;
    }
    default_normalize(out, true);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use crate::pod_info::testing::{node, pod};

    fn info(builder: crate::pod_info::testing::NodeBuilder) -> NodeInfo {
        let mut n = NodeInfo::new("n".into());
        n.set_node(builder.build());
        n
    }

    fn toleration(key: &str, op: &str, value: &str, effect: &str) -> Toleration {
        Toleration {
            key: (!key.is_empty()).then(|| key.into()),
            operator: (!op.is_empty()).then(|| op.into()),
            value: (!value.is_empty()).then(|| value.into()),
            effect: (!effect.is_empty()).then(|| effect.into()),
            toleration_seconds: None,
        }
    }

    #[test]
    fn untolerated_taint_message() {
        let n = info(node("n").taint("dedicated", "gpu", "NoSchedule"));
        let err = filter(&pod("p").info(), &n).unwrap_err();
        assert_eq!(
            err.reasons[0],
            "node(s) had untolerated taint {dedicated: gpu}"
        );
        assert_eq!(err.code, Code::UnschedulableAndUnresolvable);
        let n = info(node("n").taint("node.kubernetes.io/not-ready", "", "NoSchedule"));
        let err = filter(&pod("p").info(), &n).unwrap_err();
        assert_eq!(
            err.reasons[0],
            "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"
        );
    }

    #[test]
    fn tolerations_match_by_operator() {
        let n = info(node("n").taint("dedicated", "gpu", "NoExecute"));
        for (t, ok) in [
            (toleration("dedicated", "Equal", "gpu", "NoExecute"), true),
            (toleration("dedicated", "", "gpu", ""), true),
            (toleration("dedicated", "Exists", "", ""), true),
            (toleration("", "Exists", "", ""), true),
            (toleration("dedicated", "Equal", "cpu", ""), false),
            (toleration("dedicated", "Exists", "", "NoSchedule"), false),
        ] {
            let p = pod("p")
                .with_spec(|s| s.tolerations = Some(vec![t.clone()]))
                .info();
            assert_eq!(filter(&p, &n).is_ok(), ok, "{t:?}");
        }
        // PreferNoSchedule never filters.
        let n = info(node("n").taint("soft", "", "PreferNoSchedule"));
        assert!(filter(&pod("p").info(), &n).is_ok());
    }

    #[test]
    fn prefer_no_schedule_scoring() {
        let cache = Cache::default();
        let a = info(node("a"));
        let b = info(node("b").taint("x", "", "PreferNoSchedule"));
        let c = info(node("c").taint("x", "", "PreferNoSchedule").taint(
            "y",
            "",
            "PreferNoSchedule",
        ));
        let p = pod("p").info();
        let ctx = ScoreContext {
            pod: &p,
            cache: &cache,
        };
        let mut out = vec![0; 3];
        assert!(score(&ctx, &[&a, &b, &c], &mut out));
        assert_eq!(out, vec![100, 50, 0]);
        let p = pod("p")
            .with_spec(|s| {
                s.tolerations = Some(vec![toleration("x", "Exists", "", "PreferNoSchedule")])
            })
            .info();
        let ctx = ScoreContext {
            pod: &p,
            cache: &cache,
        };
        score(&ctx, &[&a, &b, &c], &mut out);
        assert_eq!(out, vec![100, 100, 0]);
    }
}

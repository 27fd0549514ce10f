//! Node settings given on command lines (the kubelet's --register-with-taints, sim-nodes'
//! --node-taint), parsed one way.

use k8s_openapi::api::core::v1::Taint;

/// Parses `key=value:Effect` or `key:Effect`; `None` when the text is not a taint or the
/// effect is not NoSchedule, PreferNoSchedule or NoExecute.
pub fn parse_taint(text: &str) -> Option<Taint> {
    let (key_value, effect) = text.rsplit_once(':')?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return None;
    }
    let (key, value) = match key_value.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (key_value, None),
    };
    (!key.is_empty()).then(|| Taint {
        key: key.into(),
        value,
        effect: effect.into(),
        time_added: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse_with_and_without_values() {
        let t = parse_taint("gpu=true:NoSchedule").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            ("gpu", Some("true"), "NoSchedule")
        );
        let t = parse_taint("dedicated:NoExecute").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value, t.effect.as_str()),
            ("dedicated", None, "NoExecute")
        );
        assert!(parse_taint("gpu=true").is_none());
        assert!(parse_taint("gpu=true:Sometimes").is_none());
        assert!(parse_taint(":NoSchedule").is_none());
    }
}

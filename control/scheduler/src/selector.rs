//! Label selectors compiled once and matched against label maps, with apimachinery's rules: a
//! missing selector matches nothing, an empty one matches everything.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The empty label set (for objects without labels).
pub static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In(key, values) => labels
                .get(key)
                .is_some_and(|v| values.iter().any(|w| w == v)),
            Requirement::NotIn(key, values) => labels
                .get(key)
                .is_none_or(|v| values.iter().all(|w| w != v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        }
    }
}

/// A compiled label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Matches no object (a missing or invalid selector).
    Nothing,
    /// Matches objects meeting every requirement (all objects when there are none).
    All(Vec<Requirement>),
}

impl Selector {
    /// Compiles a `metav1.LabelSelector` (`None` selects nothing; an invalid operator too).
    pub fn from_label_selector(selector: Option<&LabelSelector>) -> Self {
        let Some(selector) = selector else {
            return Selector::Nothing;
        };
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::In(key.clone(), vec![value.clone()]));
        }
        for expr in selector.match_expressions.iter().flatten() {
            let values = expr.values.clone().unwrap_or_default();
            let requirement = match expr.operator.as_str() {
                "In" if !values.is_empty() => Requirement::In(expr.key.clone(), values),
                "NotIn" if !values.is_empty() => Requirement::NotIn(expr.key.clone(), values),
                "Exists" if values.is_empty() => Requirement::Exists(expr.key.clone()),
                "DoesNotExist" if values.is_empty() => Requirement::DoesNotExist(expr.key.clone()),
                _ => return Selector::Nothing,
            };
            requirements.push(requirement);
        }
        Selector::All(requirements)
    }

    /// Selects objects whose labels include all of `set` (an empty set selects everything).
    pub fn from_set(set: &BTreeMap<String, String>) -> Self {
        Selector::All(
            set.iter()
                .map(|(k, v)| Requirement::In(k.clone(), vec![v.clone()]))
                .collect(),
        )
    }

    /// Whether the selector matches every object.
    pub fn is_everything(&self) -> bool {
        matches!(self, Selector::All(r) if r.is_empty())
    }

    /// Whether the selector matches no object (by construction).
    pub fn is_nothing(&self) -> bool {
        matches!(self, Selector::Nothing)
    }

    /// Adds requirements: the result matches what both match.
    pub fn and(&mut self, more: impl IntoIterator<Item = Requirement>) {
        if let Selector::All(requirements) = self {
            requirements.extend(more);
        }
    }

    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::Nothing => false,
            Selector::All(requirements) => requirements.iter().all(|r| r.matches(labels)),
        }
    }

    /// Like [`Selector::matches`] for optional labels.
    pub fn matches_opt(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.matches(labels.unwrap_or(&NO_LABELS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn missing_selects_nothing_and_empty_selects_everything() {
        assert!(!Selector::from_label_selector(None).matches(&labels(&[("a", "b")])));
        let empty = Selector::from_label_selector(Some(&LabelSelector::default()));
        assert!(empty.matches(&labels(&[])));
        assert!(empty.is_everything());
    }

    #[test]
    fn operators() {
        let selector = Selector::from_label_selector(Some(&LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                expr("tier", "In", &["a", "b"]),
                expr("env", "NotIn", &["prod"]),
                expr("team", "Exists", &[]),
                expr("legacy", "DoesNotExist", &[]),
            ]),
        }));
        let good = labels(&[("app", "web"), ("tier", "b"), ("team", "x")]);
        assert!(selector.matches(&good));
        let mut bad = good.clone();
        bad.insert("env".into(), "prod".into());
        assert!(!selector.matches(&bad));
        let mut bad = good.clone();
        bad.insert("legacy".into(), "1".into());
        assert!(!selector.matches(&bad));
        let mut bad = good.clone();
        bad.remove("team");
        assert!(!selector.matches(&bad));
        let mut bad = good;
        bad.insert("tier".into(), "c".into());
        assert!(!selector.matches(&bad));
    }

    #[test]
    fn invalid_operator_selects_nothing() {
        let selector = Selector::from_label_selector(Some(&LabelSelector {
            match_expressions: Some(vec![expr("a", "Gt", &["1"])]),
            ..Default::default()
        }));
        assert!(selector.is_nothing());
    }
}

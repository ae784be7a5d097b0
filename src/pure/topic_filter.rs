//! MQTT topic filters (`sensors/+/temp`, `tenant_a/#`): validation as a broker validates a
//! subscription filter, and matching a topic name against one (MQTT 5.0, 4.7). The building block
//! of per-role topic rights (issue #29, docs/adr/014-topic-rights.md). Pure logic;
//! `cargo test` runs it.

/// Why a filter is not a valid MQTT topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterError {
    Empty,
    TooLong(usize),
    /// `#` anywhere but alone in the last level (`a/#/b`, `a#`).
    MultiLevel,
    /// `+` not alone in its level (`a+/b`).
    SingleLevel,
    /// A NUL or other forbidden character (the same rule as topic names).
    Forbidden(char),
}

impl FilterError {
    pub fn message(&self, filter: &str) -> String {
        let q = super::topic::quoted(filter);
        match self {
            FilterError::Empty => "invalid MQTT topic filter: it is empty".into(),
            FilterError::TooLong(n) => format!("invalid MQTT topic filter: {n} bytes, at most 65535"),
            FilterError::MultiLevel => format!("invalid MQTT topic filter {q}: \"#\" must be alone in the last level"),
            FilterError::SingleLevel => format!("invalid MQTT topic filter {q}: \"+\" must be alone in its level"),
            FilterError::Forbidden(c) => format!("invalid MQTT topic filter {q}: it contains {c:?}"),
        }
    }

    pub fn hint(&self) -> &'static str {
        "A topic filter is a topic with optional wildcards: \"+\" for one level (sensors/+/temp), \"#\" for the rest (tenant_a/#)."
    }
}

/// Check `filter` as a broker checks a subscription's topic filter.
pub fn validate(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    if filter.len() > 65_535 {
        return Err(FilterError::TooLong(filter.len()));
    }
    if let Some((c, _)) = super::topic::first_forbidden(filter) {
        return Err(FilterError::Forbidden(c));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(FilterError::MultiLevel);
        }
        if level.contains('+') && *level != "+" {
            return Err(FilterError::SingleLevel);
        }
    }
    Ok(())
}

/// Does topic name `topic` match the (valid) filter `filter`? As a broker decides which
/// subscriptions receive a message: `+` matches exactly one level (also an empty one), `#` the
/// parent level and any number of levels below it, and a wildcard in the first level does not
/// match a topic starting with `$` (MQTT 5.0, 4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A set of (valid) filters, matched against a topic in time proportional to the topic's levels
/// rather than to the number of filters: a tree of levels, with `+` and `#` as branches of their
/// own. A role's rights on a broker are one set (data/rights.rs).
#[derive(Debug, Default)]
pub struct FilterSet {
    root: Level,
}

#[derive(Debug, Default)]
struct Level {
    /// Exact next levels.
    exact: std::collections::HashMap<String, Level>,
    /// The `+` branch.
    plus: Option<Box<Level>>,
    /// A filter ends here with `#` (matches this level's parent and everything below).
    hash: bool,
    /// A filter ends exactly here.
    end: bool,
}

impl FilterSet {
    pub fn new() -> FilterSet {
        FilterSet::default()
    }

    pub fn insert(&mut self, filter: &str) {
        let mut at = &mut self.root;
        for level in filter.split('/') {
            at = match level {
                "#" => {
                    at.hash = true;
                    return;
                }
                "+" => at.plus.get_or_insert_with(Default::default),
                l => at.exact.entry(l.to_string()).or_default(),
            };
        }
        at.end = true;
    }

    pub fn is_empty(&self) -> bool {
        let r = &self.root;
        r.exact.is_empty() && r.plus.is_none() && !r.hash && !r.end
    }

    /// Does any filter of the set match `topic` (as `matches` would)?
    pub fn matches(&self, topic: &str) -> bool {
        fn walk(at: &Level, levels: &[&str], first: bool) -> bool {
            if at.hash && !(first && levels.first().is_some_and(|l| l.starts_with('$'))) {
                return true;
            }
            let Some((head, rest)) = levels.split_first() else { return at.end };
            if let Some(next) = at.exact.get(*head) {
                if walk(next, rest, false) {
                    return true;
                }
            }
            match &at.plus {
                Some(p) if !(first && head.starts_with('$')) => walk(p, rest, false),
                _ => false,
            }
        }
        let levels: Vec<&str> = topic.split('/').collect();
        walk(&self.root, &levels, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_filters() {
        for f in ["a", "a/b", "#", "+", "a/#", "+/+", "sensors/+/temp", "/", "a//b", "$SYS/#", "tenant_a/#"] {
            assert_eq!(validate(f), Ok(()), "{f}");
        }
    }

    #[test]
    fn invalid_filters_say_why() {
        assert_eq!(validate(""), Err(FilterError::Empty));
        assert_eq!(validate("a/#/b"), Err(FilterError::MultiLevel));
        assert_eq!(validate("a#"), Err(FilterError::MultiLevel));
        assert_eq!(validate("a/b#"), Err(FilterError::MultiLevel));
        assert_eq!(validate("a+/b"), Err(FilterError::SingleLevel));
        assert_eq!(validate("a/+b"), Err(FilterError::SingleLevel));
        assert_eq!(validate("a\u{0}b"), Err(FilterError::Forbidden('\u{0}')));
        assert_eq!(validate(&"a".repeat(65_536)), Err(FilterError::TooLong(65_536)));
        assert_eq!(
            validate("a/#/b").unwrap_err().message("a/#/b"),
            "invalid MQTT topic filter \"a/#/b\": \"#\" must be alone in the last level"
        );
    }

    #[test]
    fn a_set_matches_as_its_filters_do() {
        let filters = ["a/b", "a/+", "+/b", "a/#", "#", "+/+", "sensors/+/temp", "$SYS/#", "tenant_a/#", "x//y", "/"];
        let topics = [
            "a/b",
            "a",
            "a/",
            "a/b/c",
            "b",
            "x/b",
            "/x",
            "$SYS/x",
            "sensors/k/temp",
            "sensors/k/k/temp",
            "tenant_a",
            "tenant_ab",
            "x//y",
            "x/y",
            "/",
            "",
        ];
        for f in filters {
            let mut set = FilterSet::new();
            set.insert(f);
            for t in topics {
                assert_eq!(set.matches(t), matches(f, t), "{f} against {t}");
            }
        }
        let mut set = FilterSet::new();
        assert!(set.is_empty() && !set.matches("a"));
        for i in 0..1000 {
            set.insert(&format!("bench/other{i}/#"));
        }
        set.insert("sensors/+/temp");
        assert!(set.matches("bench/other999/x") && set.matches("sensors/k1/temp"));
        assert!(!set.matches("bench/other1000/x") && !set.matches("sensors/k1/hum"));
    }

    #[test]
    fn matching_follows_the_mqtt_rules() {
        let yes = [
            ("a/b", "a/b"),
            ("a/+", "a/b"),
            ("a/+", "a/"),
            ("+/b", "a/b"),
            ("a/#", "a"),
            ("a/#", "a/b/c"),
            ("#", "a/b"),
            ("+/+", "/x"),
            ("sensors/+/temp", "sensors/k1/temp"),
            ("$SYS/#", "$SYS/x"),
        ];
        for (f, t) in yes {
            assert!(matches(f, t), "{f} should match {t}");
        }
        let no = [
            ("a/b", "a/b/c"),
            ("a/+", "a/b/c"),
            ("a/+", "a"),
            ("a/b", "a/c"),
            ("tenant_a/#", "tenant_b/x"),
            ("tenant_a/#", "tenant_ab"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("sensors/+/temp", "sensors/k1/k2/temp"),
        ];
        for (f, t) in no {
            assert!(!matches(f, t), "{f} should not match {t}");
        }
    }
}

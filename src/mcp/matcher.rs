//! A rule's `mcp:` condition (DESIGN §5): which JSON-RPC methods and tools
//! it covers, as globs where `*` matches any run of characters (including
//! none, and including `/`). Matching is case-sensitive, as JSON-RPC method
//! names and MCP tool names are.
//!
//! ```text
//! mcp: {methods: ["tools/call"], tools: ["delete_*"]}
//!   McpMatcher::new(Some(["tools/call"]), Some(["delete_*"]))?.matches("tools/call", Some("delete_order")) == true
//! ```

use std::fmt;

/// Why an `mcp:` condition does not compile; each message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpMatcherError {
    /// `methods: []` or `tools: []`, which would match nothing.
    #[error(
        "mcp.{field} is an empty list, which matches nothing; omit the field to match any {what}"
    )]
    EmptyList {
        /// `methods` or `tools`.
        field: &'static str,
        /// What the field lists.
        what: &'static str,
    },
    /// An empty pattern.
    #[error("mcp.{field}[{index}] is empty")]
    EmptyPattern {
        /// `methods` or `tools`.
        field: &'static str,
        /// Its position.
        index: usize,
    },
    /// A character no method or tool name has.
    #[error(
        "mcp.{field}[{index}] {pattern:?} contains {character:?}; names are printable ASCII without spaces (glob: only '*')"
    )]
    InvalidCharacter {
        /// `methods` or `tools`.
        field: &'static str,
        /// Its position.
        index: usize,
        /// The pattern.
        pattern: String,
        /// The offending character.
        character: char,
    },
    /// `**`, a path glob that means nothing more here.
    #[error(
        "mcp.{field}[{index}] {pattern:?} contains \"**\"; a single '*' already matches any characters, '/' included"
    )]
    DoubleStar {
        /// `methods` or `tools`.
        field: &'static str,
        /// Its position.
        index: usize,
        /// The pattern.
        pattern: String,
    },
}

/// One compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob(String);

impl Glob {
    fn compile(field: &'static str, index: usize, pattern: &str) -> Result<Self, McpMatcherError> {
        if pattern.is_empty() {
            return Err(McpMatcherError::EmptyPattern { field, index });
        }
        if let Some(character) = pattern.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(McpMatcherError::InvalidCharacter {
                field,
                index,
                pattern: pattern.to_string(),
                character,
            });
        }
        if pattern.contains("**") {
            return Err(McpMatcherError::DoubleStar {
                field,
                index,
                pattern: pattern.to_string(),
            });
        }
        Ok(Glob(pattern.to_string()))
    }

    fn matches(&self, text: &str) -> bool {
        glob_matches(&self.0, text)
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of
/// characters: iterative, with one backtrack point (the last `*`),
/// O(pattern × text) at worst, no recursion.
pub(crate) fn glob_matches(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A compiled `mcp: {methods, tools}` condition; an omitted list matches
/// anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpMatcher {
    methods: Option<Vec<Glob>>,
    tools: Option<Vec<Glob>>,
}

impl McpMatcher {
    /// Compiles the two optional lists of globs.
    pub fn new<S: AsRef<str>>(
        methods: Option<&[S]>,
        tools: Option<&[S]>,
    ) -> Result<Self, McpMatcherError> {
        Ok(McpMatcher {
            methods: compile_list("methods", "method", methods)?,
            tools: compile_list("tools", "tool", tools)?,
        })
    }

    /// Whether a call matches: its method against `methods`, and its tool
    /// against `tools`. A call without a tool (any method but `tools/call`)
    /// never matches a condition that lists tools.
    pub fn matches(&self, method: &str, tool: Option<&str>) -> bool {
        let any = |globs: &[Glob], text: &str| globs.iter().any(|g| g.matches(text));
        let method_ok = self.methods.as_deref().is_none_or(|g| any(g, method));
        let tool_ok = match (&self.tools, tool) {
            (None, _) => true,
            (Some(globs), Some(tool)) => any(globs, tool),
            (Some(_), None) => false,
        };
        method_ok && tool_ok
    }

    /// Whether the condition lists tools (so only `tools/call` can match).
    pub fn names_tools(&self) -> bool {
        self.tools.is_some()
    }
}

fn compile_list<S: AsRef<str>>(
    field: &'static str,
    what: &'static str,
    patterns: Option<&[S]>,
) -> Result<Option<Vec<Glob>>, McpMatcherError> {
    let Some(patterns) = patterns else {
        return Ok(None);
    };
    if patterns.is_empty() {
        return Err(McpMatcherError::EmptyList { field, what });
    }
    patterns
        .iter()
        .enumerate()
        .map(|(index, p)| Glob::compile(field, index, p.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(methods: Option<&[&str]>, tools: Option<&[&str]>) -> McpMatcher {
        McpMatcher::new(methods, tools).unwrap()
    }

    #[test]
    fn the_design_example_rules_match_as_documented() {
        let write = matcher(Some(&["tools/call"]), Some(&["delete_*"]));
        assert!(write.matches("tools/call", Some("delete_order")));
        assert!(write.matches("tools/call", Some("delete_")));
        assert!(!write.matches("tools/call", Some("read_orders")));
        assert!(!write.matches("tools/list", None));
        assert!(!write.matches("tools/call", None));

        let session = matcher(
            Some(&["initialize", "notifications/*", "ping", "tools/list"]),
            None,
        );
        for method in [
            "initialize",
            "notifications/initialized",
            "notifications/cancelled",
            "ping",
            "tools/list",
        ] {
            assert!(session.matches(method, None), "{method}");
        }
        assert!(!session.matches("tools/call", Some("read_orders")));
        assert!(!session.matches("notifications", None));
        assert!(!session.matches("Ping", None), "case-sensitive");
    }

    #[test]
    fn omitted_lists_match_anything() {
        let any = matcher(None, None);
        assert!(any.matches("tools/call", Some("x")));
        assert!(any.matches("anything", None));
        let tools_only = matcher(None, Some(&["read_*"]));
        assert!(tools_only.matches("tools/call", Some("read_orders")));
        assert!(!tools_only.matches("tools/call", Some("delete_order")));
        assert!(tools_only.names_tools() && !any.names_tools());
    }

    #[test]
    fn star_matches_any_run_including_none_and_slashes() {
        for (pattern, text, expected) in [
            ("*", "", true),
            ("*", "a/b/c", true),
            ("a*", "a", true),
            ("*a", "ba", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "abcbc", true),
            ("a*b*c", "acb", false),
            ("*/*", "tools/call", true),
            ("*/*", "ping", false),
            ("tools/*", "tools/call/x", true),
            ("x*y", "xay_", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            let glob = Glob::compile("methods", 0, pattern).unwrap();
            assert_eq!(glob.matches(text), expected, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn a_pathological_pattern_stays_fast() {
        let glob = Glob::compile("tools", 0, &"*a".repeat(50)).unwrap();
        let text = "a".repeat(49) + &"b".repeat(10_000);
        let started = std::time::Instant::now();
        assert!(!glob.matches(&text));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn invalid_conditions_are_refused_naming_the_field() {
        let empty: &[&str] = &[];
        assert_eq!(
            McpMatcher::new(Some(empty), None),
            Err(McpMatcherError::EmptyList {
                field: "methods",
                what: "method"
            })
        );
        assert_eq!(
            McpMatcher::new(None, Some(&["read_*", ""])),
            Err(McpMatcherError::EmptyPattern {
                field: "tools",
                index: 1
            })
        );
        assert!(matches!(
            McpMatcher::new(Some(&["tools/ call"]), None),
            Err(McpMatcherError::InvalidCharacter { character: ' ', .. })
        ));
        assert!(matches!(
            McpMatcher::new(None, Some(&["d\u{e9}lete"])),
            Err(McpMatcherError::InvalidCharacter { .. })
        ));
        let error = McpMatcher::new(Some(&["tools/**"]), None).unwrap_err();
        assert!(matches!(error, McpMatcherError::DoubleStar { .. }));
        assert!(error.to_string().contains("mcp.methods[0]"), "{error}");
    }
}

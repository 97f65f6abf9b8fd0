//! Parsing fetched JSON without echoing it: serde_json's own messages quote
//! the offending input (`invalid type: string "…"`), and fetched content must
//! never reach policy status, `/readyz` or logs.

use serde::de::DeserializeOwned;

/// What is wrong with a fetched JSON document, told by category and position
/// only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonProblem {
    /// Not JSON at all.
    #[error("invalid JSON at line {line} column {column}")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// JSON that ends too early.
    #[error("truncated JSON at line {line} column {column}")]
    Truncated {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// Well-formed JSON with a value of the wrong type or shape.
    #[error("a value of the wrong type at line {line} column {column}")]
    WrongType {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// A required member is absent (or `null`).
    #[error("missing field {0}")]
    MissingField(&'static str),
}

impl JsonProblem {
    fn from_serde(error: &serde_json::Error) -> Self {
        let (line, column) = (error.line(), error.column());
        match error.classify() {
            serde_json::error::Category::Eof => JsonProblem::Truncated { line, column },
            serde_json::error::Category::Data => JsonProblem::WrongType { line, column },
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                JsonProblem::Syntax { line, column }
            }
        }
    }
}

/// Parses `body` as `T`; the error tells where, never what was there.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, JsonProblem> {
    serde_json::from_slice(body).map_err(|e| JsonProblem::from_serde(&e))
}

/// The value of a required member, or [`JsonProblem::MissingField`].
pub(crate) fn required<T>(value: Option<T>, field: &'static str) -> Result<T, JsonProblem> {
    value.ok_or(JsonProblem::MissingField(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Doc {
        #[allow(dead_code)]
        name: Option<String>,
    }

    #[test]
    fn problems_name_the_position_never_the_content() {
        let marker = "MARKER-7f3a";
        for (body, expected) in [
            (
                format!("<html>{marker}</html>"),
                "invalid JSON at line 1 column 1",
            ),
            (
                format!("{{\"name\": \"{marker}"),
                "truncated JSON at line 1 column 21",
            ),
            (
                format!("{{\"name\": [\"{marker}\"]}}"),
                "a value of the wrong type at line 1 column 9",
            ),
            (
                format!("\"{marker}\""),
                "a value of the wrong type at line 1 column 13",
            ),
            (
                format!("{{\"name\": \"x\"}} {marker}"),
                "invalid JSON at line 1 column 15",
            ),
        ] {
            let problem = parse::<Doc>(body.as_bytes()).unwrap_err().to_string();
            assert_eq!(problem, expected, "{body}");
            // serde_json itself would have quoted the marker in some of these.
            assert!(!problem.contains(marker));
        }
        assert_eq!(
            required(None::<String>, "jwks_uri")
                .unwrap_err()
                .to_string(),
            "missing field jwks_uri"
        );
    }
}

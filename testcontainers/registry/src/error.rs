//! Confluent's error responses: `{"error_code": 40401, "message": "..."}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error as the Confluent API reports it. The `code` is Confluent's, the HTTP status follows
/// from its first three digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: u32,
    pub message: String,
}

impl ApiError {
    fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn subject_not_found(subject: &str) -> Self {
        Self::new(40401, format!("Subject '{subject}' not found."))
    }

    pub fn version_not_found(version: impl std::fmt::Display) -> Self {
        Self::new(40402, format!("Version {version} not found."))
    }

    pub fn schema_not_found() -> Self {
        Self::new(40403, "Schema not found")
    }

    pub fn subject_soft_deleted(subject: &str) -> Self {
        Self::new(
            40404,
            format!(
                "Subject '{subject}' was soft deleted.Set permanent=true to delete permanently"
            ),
        )
    }

    pub fn subject_not_soft_deleted(subject: &str) -> Self {
        Self::new(
            40405,
            format!("Subject '{subject}' was not deleted first before being permanently deleted"),
        )
    }

    pub fn version_not_soft_deleted(subject: &str, version: u32) -> Self {
        Self::new(
            40407,
            format!(
                "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
            ),
        )
    }

    pub fn version_soft_deleted(subject: &str, version: u32) -> Self {
        Self::new(
            40406,
            format!(
                "Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently"
            ),
        )
    }

    pub fn subject_level_compatibility_not_configured(subject: &str) -> Self {
        Self::new(
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )
    }

    pub fn incompatible(messages: &[String]) -> Self {
        Self::new(
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject; details: [{}]",
                messages.join(", ")
            ),
        )
    }

    pub fn invalid_schema(detail: impl std::fmt::Display) -> Self {
        Self::new(42201, format!("Invalid schema: {detail}"))
    }

    pub fn invalid_version(version: &str) -> Self {
        Self::new(
            42202,
            format!(
                "The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
            ),
        )
    }

    pub fn invalid_compatibility_level(level: &str) -> Self {
        Self::new(
            42203,
            format!(
                "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive; got '{level}'"
            ),
        )
    }

    pub fn unprocessable(detail: impl std::fmt::Display) -> Self {
        Self::new(422, detail.to_string())
    }

    pub fn bad_request(detail: impl std::fmt::Display) -> Self {
        Self::new(400, detail.to_string())
    }

    pub fn store(detail: impl std::fmt::Display) -> Self {
        Self::new(50001, format!("Error in the backend data store - {detail}"))
    }

    pub fn not_found_route() -> Self {
        Self::new(404, "HTTP 404 Not Found")
    }

    /// The HTTP status: the first three digits of a five-digit code, or the code itself.
    pub fn status(&self) -> StatusCode {
        let status = if self.code >= 10_000 {
            self.code / 100
        } else {
            self.code
        };
        u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error_code": self.code, "message": self.message });
        crate::http::json_response(self.status(), &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_code() {
        assert_eq!(
            ApiError::subject_not_found("s").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::invalid_schema("x").status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(ApiError::incompatible(&[]).status(), StatusCode::CONFLICT);
        assert_eq!(
            ApiError::store("x").status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(ApiError::bad_request("x").status(), StatusCode::BAD_REQUEST);
    }
}

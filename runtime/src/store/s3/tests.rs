//! Unit tests of the S3 store's error classification and retention texts.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ErrorMetadata, SdkError};
use aws_sdk_s3::operation::delete_object::DeleteObjectError;
use aws_sdk_s3::primitives::SdkBody;

use super::client::{is_denied, is_unimplemented};
use super::lock::until_text;

fn service_error(status: u16, code: &str) -> SdkError<DeleteObjectError, HttpResponse> {
    let raw = HttpResponse::new(status.try_into().expect("status code"), SdkBody::empty());
    SdkError::service_error(
        DeleteObjectError::generic(ErrorMetadata::builder().code(code).build()),
        raw,
    )
}

#[test]
fn a_refused_version_delete_is_recognised_as_a_refusal() {
    // What an enforcing server answers for a locked version (moto, AWS, MinIO).
    assert!(is_denied(&service_error(403, "AccessDenied")));
    // A 403 without a code (a HEAD-style answer) too.
    assert!(is_denied(&service_error(403, "")));
    assert!(!is_denied(&service_error(404, "NoSuchVersion")));
    assert!(!is_denied(&service_error(500, "InternalError")));
    assert!(is_unimplemented(&service_error(501, "NotImplemented")));
    assert!(!is_unimplemented(&service_error(400, "InvalidArgument")));
}

#[test]
fn retention_ends_are_named_to_the_second_rounded_up() {
    let t = aws_sdk_s3::primitives::DateTime::from_secs_and_nanos(1_796_249_029, 1);
    assert_eq!(until_text(&t), "2026-12-02T22:03:50Z");
    let t = aws_sdk_s3::primitives::DateTime::from_secs(1_796_249_029);
    assert_eq!(until_text(&t), "2026-12-02T22:03:49Z");
}

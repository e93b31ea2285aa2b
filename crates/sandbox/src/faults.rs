//! Injectable faults for the token endpoint and the API, and the slot that arms them.

use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{StatusCode, header};
use serde::{Deserialize, Serialize};

use super::state::lock;

/// A misbehaviour of the token endpoint, applied before normal handling.
///
/// Serialised with a `kind` tag, e.g. `{"kind":"status","status":503,"retry_after_secs":2}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TokenFault {
    /// Answer this status with an Entra-shaped error body (`error` defaults to
    /// `temporarily_unavailable`; `aadsts` adds the code to the description and `error_codes`).
    Status {
        /// HTTP status (a non-final one becomes 500).
        status: u16,
        /// `Retry-After` in seconds.
        #[serde(default)]
        retry_after_secs: Option<u64>,
        /// The OAuth2 `error` value.
        #[serde(default)]
        error: Option<String>,
        /// The AADSTS code, e.g. 50196.
        #[serde(default)]
        aadsts: Option<u32>,
    },
    /// Wait this long, then handle the request normally.
    Delay {
        /// Milliseconds to wait.
        millis: u64,
    },
    /// 200 with an HTML page instead of JSON.
    Garbage,
    /// 200 with an empty body.
    EmptyOk,
    /// 200 whose body breaks off mid-way (the connection is aborted).
    Reset,
    /// 200 with well-formed JSON that lacks `access_token`.
    NoAccessToken,
}

/// A misbehaviour of the API, applied before authentication and normal handling.
///
/// Serialised with a `kind` tag, e.g. `{"kind":"status","status":503,"retry_after":"2"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApiFault {
    /// Answer this status with a Defender error body; `retry_after` is sent verbatim.
    Status {
        /// HTTP status (a non-final one becomes 500).
        status: u16,
        /// `Retry-After` value, e.g. `"2"`, `"1.5"` or an HTTP date.
        #[serde(default)]
        retry_after: Option<String>,
    },
    /// Start a 200 answer, then abort the body mid-stream.
    ResetMidBody,
    /// Wait this long before handling the request (and so before the answer head).
    Stall {
        /// Milliseconds to wait.
        millis: u64,
    },
}

/// The JSON accepted by `POST /_sandbox/token-fault` and `/_sandbox/api-fault`:
/// the fault's own fields plus an optional `times` (absent = until cleared).
#[derive(Debug, Deserialize)]
pub(super) struct FaultRequest<F> {
    #[serde(flatten)]
    pub fault: F,
    #[serde(default)]
    pub times: Option<u32>,
}

/// Holds the armed fault and how many more requests it applies to.
pub(super) struct FaultSlot<F> {
    armed: Mutex<Option<Armed<F>>>,
}

struct Armed<F> {
    fault: F,
    remaining: Option<u32>,
}

impl<F: Clone> FaultSlot<F> {
    pub fn new() -> Self {
        FaultSlot {
            armed: Mutex::new(None),
        }
    }

    /// Arms `fault` for the next `times` requests (`None` = until cleared); `None` clears.
    pub fn set(&self, fault: Option<F>, times: Option<u32>) {
        let armed = fault.filter(|_| times != Some(0)).map(|fault| Armed {
            fault,
            remaining: times,
        });
        *lock(&self.armed) = armed;
    }

    /// The fault for this request, if any, counting it against `times`.
    pub fn take(&self) -> Option<F> {
        let mut slot = lock(&self.armed);
        let armed = slot.as_mut()?;
        let fault = armed.fault.clone();
        match &mut armed.remaining {
            Some(1) => *slot = None,
            Some(n) => *n -= 1,
            None => {}
        }
        Some(fault)
    }
}

/// The status a fault asks for; anything that is not a final status becomes 500.
pub(super) fn fault_status(status: u16) -> StatusCode {
    StatusCode::from_u16(status)
        .ok()
        .filter(|s| !s.is_informational())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A 200 that promises more body than it sends: `prefix`, a pause so the head and the prefix
/// reach the client, then a stream error, which makes the server abort the connection.
pub(super) fn aborted_response(prefix: &'static [u8]) -> Response {
    let declared = prefix.len() + 4096;
    let start = stream::once(async move { Ok(Bytes::from_static(prefix)) });
    let fail = stream::once(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "sandbox fault: reset",
        ))
    });
    let mut response = Response::new(Body::from_stream(start.chain(fail)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(declared));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_applies_times_then_clears() {
        let slot = FaultSlot::new();
        slot.set(Some(TokenFault::Garbage), Some(2));
        assert_eq!(slot.take(), Some(TokenFault::Garbage));
        assert_eq!(slot.take(), Some(TokenFault::Garbage));
        assert_eq!(slot.take(), None);
    }

    #[test]
    fn fault_without_times_stays_until_cleared() {
        let slot = FaultSlot::new();
        slot.set(Some(ApiFault::ResetMidBody), None);
        for _ in 0..5 {
            assert_eq!(slot.take(), Some(ApiFault::ResetMidBody));
        }
        slot.set(None, None);
        assert_eq!(slot.take(), None);
    }

    #[test]
    fn fault_request_reads_kind_fields_and_times() {
        let body = r#"{"kind":"status","status":503,"retry_after_secs":2,"times":3}"#;
        let req: FaultRequest<TokenFault> = serde_json::from_str(body).expect("parses");
        let want = TokenFault::Status {
            status: 503,
            retry_after_secs: Some(2),
            error: None,
            aadsts: None,
        };
        assert_eq!(req.fault, want);
        assert_eq!(req.times, Some(3));
        let req: Option<FaultRequest<ApiFault>> = serde_json::from_str("null").expect("parses");
        assert!(req.is_none());
        let body = serde_json::to_string(&ApiFault::Stall { millis: 5 }).expect("serialises");
        let req: FaultRequest<ApiFault> = serde_json::from_str(&body).expect("round-trips");
        assert_eq!(
            (req.fault, req.times),
            (ApiFault::Stall { millis: 5 }, None)
        );
    }
}

//! OpenChoreo's tunnel messages, for its cluster agents and gateway: a WebSocket with no
//! subprotocol, each text frame one JSON object, bodies whole and base64-encoded. There
//! is no type field: the keys present say what a frame is ([`FromAgent::parse`]).
//!
//! Built from the facts in OpenChoreo's wire protocol description: key spellings are
//! exactly theirs (`requestID` but `streamId`), headers are Go's `http.Header` shape
//! (canonical names, arrays of values), `data` of a chunk is always written.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

/// The protocol's name where planelink shows it (plane status, metrics, logs).
pub const PROTOCOL: &str = "openchoreo";

/// The largest request body sent to such an agent: OpenChoreo's gateway refuses a
/// declared body over 10 MiB, and the agent holds whole bodies in memory.
pub const MAX_REQUEST_BODY: usize = 10 * 1024 * 1024;
/// The largest response body taken from such an agent (it sends bodies whole, in one
/// frame): a bigger frame closes its connection.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;
/// The largest frame: a response of [`MAX_RESPONSE_BODY`] in base64 (4/3) with its
/// headers and JSON around it.
pub const MAX_FRAME: usize = MAX_RESPONSE_BODY / 3 * 4 + 1024 * 1024;

/// Bytes as JSON: standard base64 with padding; `null` or absent when there are none.
mod base64_bytes {
    use super::BASE64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_str(&BASE64.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => BASE64
                .decode(text.as_bytes())
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("not base64: {e}"))),
        }
    }
}

/// Go's `http.Header`: canonical names, each with its values.
pub type Headers = BTreeMap<String, Vec<String>>;

/// A request for the agent to make (gateway → agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRequest {
    #[serde(rename = "requestID")]
    pub request_id: String,
    #[serde(
        rename = "gatewayRequestID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub gateway_request_id: String,
    pub target: String,
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub query: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: Headers,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "base64_bytes"
    )]
    pub body: Option<Vec<u8>>,
}

/// The agent's error report; OpenChoreo's gateway ignores it, planelink logs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    #[serde(default)]
    pub message: String,
}

/// The agent's answer to a [`TunnelRequest`] (agent → gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelResponse {
    #[serde(rename = "requestID")]
    pub request_id: String,
    /// Absent reads as 0, which is no status: the gateway answers 502.
    #[serde(rename = "statusCode", default)]
    pub status_code: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: Headers,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "base64_bytes"
    )]
    pub body: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
}

/// The start of a stream session: an exec (`target` other than `hubble`) or wire logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInit {
    #[serde(rename = "requestID")]
    pub request_id: String,
    pub target: String,
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub query: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: Headers,
    /// Always written: the agent takes a frame as a stream start only when it is true.
    #[serde(rename = "isUpgrade", default)]
    pub is_upgrade: bool,
    #[serde(
        rename = "upgradeProto",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub upgrade_proto: String,
}

/// Bytes of a stream session, either way; `data` is always written (`null` when none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamChunk {
    #[serde(rename = "requestID")]
    pub request_id: String,
    #[serde(default, with = "base64_bytes")]
    pub data: Option<Vec<u8>>,
    #[serde(rename = "streamId", default, skip_serializing_if = "is_zero")]
    pub stream_id: i64,
    #[serde(rename = "isClose", default, skip_serializing_if = "is_false")]
    pub is_close: bool,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl StreamChunk {
    /// The end of a session, with no error.
    pub fn close(request_id: &str) -> StreamChunk {
        StreamChunk {
            request_id: request_id.to_string(),
            data: None,
            stream_id: 0,
            is_close: true,
        }
    }
}

/// What an agent's frame is, told the way OpenChoreo's gateway tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromAgent {
    Response(TunnelResponse),
    Chunk(StreamChunk),
}

/// The longest part of a peer's frame an error repeats.
const MAX_ERROR: usize = 200;

/// What decides a frame's kind: the keys present, as OpenChoreo's two ends read them.
struct Frame {
    value: serde_json::Value,
    /// `data` present and not null, or `isClose: true`: a stream chunk.
    chunk: bool,
    /// `isUpgrade: true`: a stream start (the agent's reading only).
    upgrade: bool,
}

impl Frame {
    /// A JSON object with a non-empty `requestID`; errors name what is wrong, not values.
    fn parse(text: &str) -> Result<Frame, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {}", e.classify_name()))?;
        let object = value.as_object().ok_or("not a JSON object")?;
        let has_id = object
            .get("requestID")
            .and_then(|v| v.as_str())
            .is_some_and(|id| !id.is_empty());
        if !has_id {
            return Err("no requestID".into());
        }
        let flag = |key: &str| object.get(key).and_then(|v| v.as_bool()) == Some(true);
        let data = object.get("data").is_some_and(|d| !d.is_null());
        let (chunk, upgrade) = (data || flag("isClose"), flag("isUpgrade"));
        Ok(Frame {
            value,
            chunk,
            upgrade,
        })
    }

    /// The frame as `T`; the error quotes at most [`MAX_ERROR`] characters of it (serde
    /// names the offending value, which a peer chose).
    fn into<T: serde::de::DeserializeOwned>(self, what: &str) -> Result<T, String> {
        serde_json::from_value(self.value).map_err(|e| {
            let detail: String = e.to_string().chars().take(MAX_ERROR).collect();
            format!("not {what}: {detail}")
        })
    }
}

impl FromAgent {
    /// A chunk has a `requestID` and `data` that is not null, or `isClose`; anything
    /// else with a `requestID` is a response.
    pub fn parse(text: &str) -> Result<FromAgent, String> {
        let frame = Frame::parse(text)?;
        if frame.chunk {
            frame.into("a stream chunk").map(FromAgent::Chunk)
        } else {
            frame.into("a response").map(FromAgent::Response)
        }
    }
}

/// What a gateway's frame is, told the way OpenChoreo's agent tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromGateway {
    Init(StreamInit),
    Chunk(StreamChunk),
    Request(TunnelRequest),
}

impl FromGateway {
    /// A stream start has `isUpgrade: true`; a chunk has `data` that is not null or
    /// `isClose`; the rest is a request. Every kind needs a `requestID`.
    pub fn parse(text: &str) -> Result<FromGateway, String> {
        let frame = Frame::parse(text)?;
        if frame.upgrade {
            frame.into("a stream start").map(FromGateway::Init)
        } else if frame.chunk {
            frame.into("a stream chunk").map(FromGateway::Chunk)
        } else {
            frame.into("a request").map(FromGateway::Request)
        }
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected value",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// A header name in Go's canonical form: `content-type` → `Content-Type`.
pub fn canonical_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

/// Headers as Go's `http.Header`; values that are not text are left out.
pub fn to_go_headers(headers: &HeaderMap) -> Headers {
    let mut out = Headers::new();
    for (name, value) in headers {
        if let Ok(text) = value.to_str() {
            out.entry(canonical_name(name.as_str()))
                .or_default()
                .push(text.to_string());
        }
    }
    out
}

/// The most header values taken from a peer's frame: far above what requests and
/// responses carry, far below where a header map gives up.
pub const MAX_HEADERS: usize = 256;

/// Go's `http.Header` as a header map; names or values HTTP cannot carry, and values
/// beyond [`MAX_HEADERS`], are left out and counted, so the caller can say so.
pub fn from_go_headers(headers: &Headers) -> (HeaderMap, usize) {
    let mut out = HeaderMap::new();
    let mut dropped = 0;
    let mut kept = 0;
    for (name, values) in headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            dropped += values.len().max(1);
            continue;
        };
        for value in values {
            let taken = kept < MAX_HEADERS
                && HeaderValue::from_str(value)
                    .ok()
                    .is_some_and(|value| out.try_append(name.clone(), value).is_ok());
            if taken {
                kept += 1;
            } else {
                dropped += 1;
            }
        }
    }
    (out, dropped)
}

/// A fresh UUIDv4, the form OpenChoreo gives its request IDs.
pub fn new_request_id() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Encodes bytes as the protocol does (for tests and the agent side).
pub fn encode(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_told_apart_by_their_keys_as_openchoreo_does() {
        let response = r#"{"requestID":"r1","statusCode":200,"headers":{"Content-Type":["application/json"]},"body":"e30="}"#;
        match FromAgent::parse(response).unwrap() {
            FromAgent::Response(r) => {
                assert_eq!(r.status_code, 200);
                assert_eq!(r.body.as_deref(), Some(&b"{}"[..]));
                assert_eq!(r.headers["Content-Type"], vec!["application/json"]);
            }
            other => panic!("{other:?}"),
        }
        // A bare requestID is a response; a chunk needs non-null data or isClose.
        assert!(matches!(
            FromAgent::parse(r#"{"requestID":"x"}"#).unwrap(),
            FromAgent::Response(_)
        ));
        assert!(matches!(
            FromAgent::parse(r#"{"requestID":"x","data":null}"#).unwrap(),
            FromAgent::Response(_)
        ));
        assert_eq!(
            FromAgent::parse(r#"{"requestID":"x","data":""}"#).unwrap(),
            FromAgent::Chunk(StreamChunk {
                request_id: "x".into(),
                data: Some(Vec::new()),
                stream_id: 0,
                is_close: false
            })
        );
        assert_eq!(
            FromAgent::parse(r#"{"requestID":"x","data":null,"isClose":true}"#).unwrap(),
            FromAgent::Chunk(StreamChunk::close("x"))
        );
        assert_eq!(
            FromAgent::parse(r#"{"statusCode":200}"#).unwrap_err(),
            "no requestID"
        );
        assert_eq!(
            FromAgent::parse(r#"{"requestID":"x","statusCode":200,"body":"%%%"}"#)
                .unwrap_err()
                .split(':')
                .next(),
            Some("not a response")
        );
        assert_eq!(FromAgent::parse("[1]").unwrap_err(), "not a JSON object");
        assert_eq!(FromAgent::parse("{").unwrap_err(), "not JSON: truncated");

        let init = r#"{"requestID":"gw-1","target":"k8s","method":"POST","path":"/api/v1/namespaces/a/pods/b/exec","query":"stdout=true","isUpgrade":true,"upgradeProto":"SPDY/3.1"}"#;
        assert!(matches!(
            FromGateway::parse(init).unwrap(),
            FromGateway::Init(i) if i.upgrade_proto == "SPDY/3.1"
        ));
        assert!(matches!(
            FromGateway::parse(r#"{"requestID":"gw-1","data":"AGxzCg=="}"#).unwrap(),
            FromGateway::Chunk(c) if c.data.as_deref() == Some(&b"\0ls\n"[..])
        ));
        assert!(matches!(
            FromGateway::parse(r#"{"requestID":"r","target":"k8s","method":"GET","path":"/"}"#)
                .unwrap(),
            FromGateway::Request(_)
        ));
    }

    #[test]
    fn written_as_openchoreo_writes_them() {
        let chunk = StreamChunk::close("s");
        assert_eq!(
            serde_json::to_string(&chunk).unwrap(),
            r#"{"requestID":"s","data":null,"isClose":true}"#
        );
        let request = TunnelRequest {
            request_id: "r".into(),
            gateway_request_id: String::new(),
            target: "k8s".into(),
            method: "GET".into(),
            path: "/api".into(),
            query: String::new(),
            headers: Headers::new(),
            body: None,
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"requestID":"r","target":"k8s","method":"GET","path":"/api"}"#
        );
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    }

    #[test]
    fn errors_quote_little_of_a_frame() {
        let long = "x".repeat(10_000);
        let frame = format!(r#"{{"requestID":"r","statusCode":"{long}"}}"#);
        let error = FromAgent::parse(&frame).unwrap_err();
        assert!(
            error.starts_with("not a response: invalid type: string"),
            "{error}"
        );
        assert!(error.len() < 250, "{}", error.len());
    }

    #[test]
    fn headers_travel_in_go_form() {
        assert_eq!(canonical_name("content-type"), "Content-Type");
        assert_eq!(canonical_name("x-request-id"), "X-Request-Id");
        let mut map = HeaderMap::new();
        map.append("accept", HeaderValue::from_static("a"));
        map.append("accept", HeaderValue::from_static("b"));
        let go = to_go_headers(&map);
        assert_eq!(go["Accept"], vec!["a", "b"]);
        let mut bad = go.clone();
        bad.insert("bad name".into(), vec!["x".into()]);
        bad.insert("X-Ok".into(), vec!["line\nbreak".into(), "fine".into()]);
        let (back, dropped) = from_go_headers(&bad);
        assert_eq!(dropped, 2);
        let flood: Headers = (0..1000)
            .map(|i| (format!("X-{i}"), vec!["v".into()]))
            .collect();
        let (kept, dropped) = from_go_headers(&flood);
        assert_eq!((kept.len(), dropped), (MAX_HEADERS, 1000 - MAX_HEADERS));
        assert_eq!(back.get_all("accept").iter().count(), 2);
        assert_eq!(back.get("x-ok").unwrap(), "fine");
    }
}

//! Names and settings both ends of the tunnel agree on.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The `Sec-WebSocket-Protocol` of planelink's HTTP/2-in-WebSocket tunnel. An agent
/// that offers none speaks OpenChoreo's JSON messages instead.
pub const SUBPROTOCOL: &str = "planelink.v1";
/// Bumped on incompatible changes; the hello carries it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The capability of a side that speaks the h2 transport
/// ([`super::transport::H2_UPGRADE`]): an agent that fell back to WebSocket offers the
/// upgrade again once a gateway says it.
pub const H2_TRANSPORT_CAPABILITY: &str = "h2-transport";

/// Request and response header carrying the [`Hello`] on the tunnel's handshake.
pub const HELLO_HEADER: &str = "planelink-hello";
/// Tunnelled request header: the agent target (`k8s`, `agent`, a route name).
pub const TARGET_HEADER: &str = "planelink-target";
/// Tunnelled request header: the caller asked for an HTTP/1.1 upgrade to this protocol.
pub const UPGRADE_HEADER: &str = "planelink-upgrade";
/// Tunnelled response header: the upstream answered 101; the stream is now raw bytes.
pub const UPGRADED_HEADER: &str = "planelink-upgraded";
/// Tunnelled request header: the caller expects a long-lived response (watch, follow, upgrade).
pub const STREAMING_HEADER: &str = "planelink-streaming";
/// Response header set when planelink itself (not the upstream) produced the response.
pub const ERROR_SOURCE_HEADER: &str = "planelink-error-source";
/// The request ID carried from the caller through the gateway to the agent.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// `/ws` request header: the gateway replicas the agent already holds a tunnel to, so a
/// dial that lands on one of them is refused (409) before it is registered.
pub const HELD_REPLICAS_HEADER: &str = "planelink-held-replicas";
/// Tunnelled request header from the gateway: not a caller's request but news for the
/// agent itself; `membership` carries the gateway's current hello in [`HELLO_HEADER`].
/// Callers cannot send it: every `planelink-*` header of theirs is dropped.
pub const CONTROL_HEADER: &str = "planelink-control";
pub const CONTROL_MEMBERSHIP: &str = "membership";
/// The gateway is shutting down and closes the tunnel next (the h2 transport's
/// counterpart of a WebSocket Close "going away"): the agent redials promptly.
pub const CONTROL_GOING_AWAY: &str = "going-away";

/// Most gateway replicas a hello may name: bounds what a peer makes us hold.
pub const MAX_REPLICAS: usize = 64;
/// Longest replica or instance ID: a Lease name is `planelink-gateway-` and the ID, and
/// a pod name (the usual ID) has at most 63 characters.
pub const MAX_ID_LEN: usize = 63;

/// Largest header block accepted on the tunnel (Kubernetes' own limit is about 1 MiB
/// of request line and headers; real requests stay far below this).
pub const MAX_HEADER_LIST_SIZE: u32 = 256 * 1024;
/// Per-stream flow-control window: how far one stream may run ahead of its reader.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Connection-wide window, shared by all streams of one agent.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Largest HTTP/2 DATA frame we accept; larger frames mean fewer headers per byte.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;
/// Concurrent streams an agent accepts from the gateway.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// What each end says about itself on the WebSocket handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub role: String,
    pub version: String,
    pub protocol: u32,
    pub capabilities: Vec<String>,
    /// An agent's process ID, the same on each of its tunnels.
    pub instance: Option<String>,
    /// A gateway's replica and the replicas it knows to be live; `None` from a gateway
    /// that predates replicas (it is the only one).
    pub membership: Option<Membership>,
    /// The plane CRs an agent serves, as its remote plane lists them (`--serve-planes`):
    /// comma-separated, in the format the gateway parses; `None`: the agent lists none.
    pub serves: Option<String>,
}

/// Which gateway replica is speaking, and how many there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub replica: String,
    /// The live replicas; at least 1.
    pub count: usize,
    /// Their IDs when known (Leases); empty with a fixed `--replicas` count.
    pub members: Vec<String>,
}

/// A replica or instance ID: what a Kubernetes object name allows, at most
/// [`MAX_ID_LEN`] characters (so it can name a Lease, and is safe in logs and headers).
pub fn check_id(id: &str) -> Result<(), String> {
    let edges_ok = id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id.ends_with(|c: char| c.is_ascii_alphanumeric());
    let chars_ok = id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if id.is_empty() || id.len() > MAX_ID_LEN || !edges_ok || !chars_ok {
        return Err(format!(
            "{:?} is not a replica ID: use at most {MAX_ID_LEN} lowercase letters, digits, '-' and '.', \
             starting and ending with a letter or digit (a pod name is one)",
            id.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

/// A comma-separated list of IDs, each checked, at most [`MAX_REPLICAS`].
pub fn parse_ids(list: &str) -> Result<Vec<String>, String> {
    let ids: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(String::from)
        .collect();
    if ids.len() > MAX_REPLICAS {
        return Err(format!("more than {MAX_REPLICAS} replica IDs"));
    }
    for id in &ids {
        check_id(id)?;
    }
    Ok(ids)
}

impl Hello {
    /// What stands for the hello of OpenChoreo's agent or gateway, which send none: no
    /// version, no capabilities, no instance (an agent's tunnels are never taken for one
    /// another's), no replicas.
    pub fn openchoreo(role: &str) -> Hello {
        Hello {
            role: role.into(),
            version: super::openchoreo::PROTOCOL.into(),
            protocol: 0,
            capabilities: Vec::new(),
            instance: None,
            membership: None,
            serves: None,
        }
    }

    pub fn ours(role: &str) -> Hello {
        Hello {
            role: role.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
            capabilities: [
                "h2",
                "upgrade",
                "streaming",
                "request-id",
                "replicas",
                H2_TRANSPORT_CAPABILITY,
            ]
            .map(String::from)
            .to_vec(),
            instance: None,
            membership: None,
            serves: None,
        }
    }

    pub fn to_header(&self) -> String {
        let mut header = format!(
            "role={}; version={}; protocol={}; capabilities={}",
            self.role,
            self.version,
            self.protocol,
            self.capabilities.join(",")
        );
        if let Some(instance) = &self.instance {
            header.push_str(&format!("; instance={instance}"));
        }
        if let Some(serves) = &self.serves {
            header.push_str(&format!("; serves={serves}"));
        }
        if let Some(m) = &self.membership {
            header.push_str(&format!("; replica={}; replicas={}", m.replica, m.count));
            if !m.members.is_empty() {
                header.push_str(&format!("; members={}", m.members.join(",")));
            }
        }
        header
    }

    pub fn parse(header: &str) -> Result<Hello, String> {
        let mut hello = Hello {
            role: String::new(),
            version: String::new(),
            protocol: 0,
            capabilities: Vec::new(),
            instance: None,
            membership: None,
            serves: None,
        };
        let (mut replica, mut count, mut members) = (None, None, Vec::new());
        for part in header.split(';') {
            let Some((key, value)) = part.trim().split_once('=') else {
                continue;
            };
            match key.trim() {
                "role" => hello.role = value.trim().to_string(),
                "version" => hello.version = value.trim().to_string(),
                "protocol" => {
                    hello.protocol = value
                        .trim()
                        .parse()
                        .map_err(|_| format!("protocol {value:?} is not a number"))?
                }
                "capabilities" => {
                    hello.capabilities = value
                        .split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(String::from)
                        .collect()
                }
                "instance" => {
                    check_id(value.trim())?;
                    hello.instance = Some(value.trim().to_string());
                }
                "replica" => {
                    check_id(value.trim())?;
                    replica = Some(value.trim().to_string());
                }
                "replicas" => {
                    let n: usize = value
                        .trim()
                        .parse()
                        .map_err(|_| format!("replicas {value:?} is not a number"))?;
                    if !(1..=MAX_REPLICAS).contains(&n) {
                        return Err(format!("replicas {n} is not within 1..={MAX_REPLICAS}"));
                    }
                    count = Some(n);
                }
                "members" => members = parse_ids(value)?,
                "serves" => hello.serves = Some(value.trim().to_string()),
                _ => {}
            }
        }
        if hello.protocol == 0 {
            return Err(format!(
                "hello {:?} names no protocol version",
                header.chars().take(200).collect::<String>()
            ));
        }
        if let Some(replica) = replica {
            let count = count.unwrap_or(1).max(members.len());
            hello.membership = Some(Membership {
                replica,
                count,
                members,
            });
        }
        Ok(hello)
    }

    /// Whether we can talk to the peer that sent this hello.
    pub fn compatible(&self) -> Result<(), String> {
        if self.protocol != PROTOCOL_VERSION {
            return Err(format!(
                "peer {} {} speaks tunnel protocol {}, this planelink speaks {PROTOCOL_VERSION}; \
                 upgrade the older side",
                self.role, self.version, self.protocol
            ));
        }
        Ok(())
    }
}

/// Heartbeats: HTTP/2 PINGs every `interval`; a peer that does not answer within the
/// rest of `timeout` is dead, so a silent peer is detected within `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Heartbeat {
    fn ack_timeout(self) -> Duration {
        self.timeout
            .saturating_sub(self.interval)
            .max(Duration::from_secs(1))
    }
}

/// The gateway's end: an HTTP/2 client over the tunnel's byte stream.
pub fn client_builder(heartbeat: Heartbeat) -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buf_size(256 * 1024)
        .keep_alive_interval(heartbeat.interval)
        .keep_alive_timeout(heartbeat.ack_timeout())
        .keep_alive_while_idle(true);
    builder
}

/// The agent's end: an HTTP/2 server over the tunnel's byte stream.
pub fn server_builder(heartbeat: Heartbeat) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buf_size(256 * 1024)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(heartbeat.interval)
        .keep_alive_timeout(heartbeat.ack_timeout());
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_mismatch() {
        let hello = Hello::ours("agent");
        let parsed = Hello::parse(&hello.to_header()).unwrap();
        assert_eq!(parsed, hello);
        assert!(parsed.compatible().is_ok());
        let future = Hello::parse("role=gateway; version=9.0.0; protocol=2").unwrap();
        assert!(
            future
                .compatible()
                .unwrap_err()
                .contains("upgrade the older side")
        );
        assert!(Hello::parse("garbage").is_err());
        assert!(Hello::parse("protocol=x").is_err());
    }

    #[test]
    fn membership_round_trip_and_bounds() {
        let mut hello = Hello::ours("gateway");
        hello.membership = Some(Membership {
            replica: "gw-1".into(),
            count: 3,
            members: vec!["gw-0".into(), "gw-1".into(), "gw-2".into()],
        });
        assert_eq!(Hello::parse(&hello.to_header()).unwrap(), hello);
        let mut agent = Hello::ours("agent");
        agent.instance = Some("0123456789abcdef".into());
        assert_eq!(Hello::parse(&agent.to_header()).unwrap(), agent);
        // A fixed count, no member list.
        let fixed = Hello::parse("protocol=1; replica=a; replicas=2").unwrap();
        assert_eq!(fixed.membership.unwrap().count, 2);
        for bad in [
            "protocol=1; replica=A_B",
            "protocol=1; replica=a; replicas=0",
            "protocol=1; replica=a; replicas=65",
            "protocol=1; replica=a; members=x,-y",
            "protocol=1; instance=\u{1b}[31m",
        ] {
            assert!(Hello::parse(bad).is_err(), "{bad}");
        }
        let many = (0..65)
            .map(|i| format!("r{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            Hello::parse(&format!("protocol=1; replica=a; members={many}")).unwrap_err(),
            "more than 64 replica IDs"
        );
        assert!(check_id(&"a".repeat(63)).is_ok());
        assert!(check_id(&"a".repeat(64)).is_err());
    }
}

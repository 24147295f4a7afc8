//! `planelink status`: one row per plane CR, from the CRs, their status and their client
//! CAs; `-o json|yaml` for scripts, `--watch` to follow.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::facts::{self, Inventory, Mode, PlaneFacts};
use super::{StatusArgs, StatusFormat, Style};
use crate::planes::crd::ConnectedAgent;
use crate::trust::{self, Expiry, ExpiryState};

/// One plane as `status` shows it; `-o json|yaml` prints these.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaneRow {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    #[serde(rename = "planeID")]
    pub plane_id: String,
    pub mode: &'static str,
    /// `True`, `False` or `Unknown` (no condition written yet).
    pub ready: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub connected_agents: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_replicas: Option<String>,
    pub protocols: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<String>,
    #[serde(rename = "clientCA", skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<CertificateExpiry>,
    /// Why the client CA cannot be used, when it cannot (the controller's reason).
    #[serde(rename = "clientCAProblem", skip_serializing_if = "Option::is_none")]
    pub client_ca_problem: Option<String>,
    /// The connected agent certificate that expires first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_certificate: Option<CertificateExpiry>,
    pub agents: Vec<ConnectedAgent>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateExpiry {
    pub not_after: String,
    pub days_left: i64,
    pub state: ExpiryState,
}

impl From<Expiry> for CertificateExpiry {
    fn from(e: Expiry) -> CertificateExpiry {
        CertificateExpiry {
            not_after: trust::inspect::format_time(e.not_after),
            days_left: e.days_left,
            state: e.state,
        }
    }
}

/// Everything `status` prints, for scripts.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub planes: Vec<PlaneRow>,
    /// Plane kinds whose CRD is not installed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_crds: Vec<&'static str>,
    /// Objects that are not valid plane CRs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<String>,
}

pub fn row(facts: &PlaneFacts, now: SystemTime, warn: Duration) -> PlaneRow {
    let connection = facts.connection.as_ref();
    let mut protocols: Vec<String> = connection
        .map(|c| c.agents.iter().map(|a| a.protocol.clone()).collect())
        .unwrap_or_default();
    protocols.sort();
    protocols.dedup();
    PlaneRow {
        kind: facts.kind(),
        namespace: facts.namespace.clone(),
        name: facts.name.clone(),
        plane_id: facts.plane_id.clone(),
        mode: facts.mode.as_str(),
        ready: facts
            .ready
            .as_ref()
            .map_or("Unknown".to_string(), |c| c.status.clone()),
        reason: facts.ready.as_ref().map(|c| c.reason.clone()),
        message: facts.ready.as_ref().map(|c| c.message.clone()),
        connected_agents: connection.map_or(0, |c| c.connected_agents),
        gateway_replicas: connection.and_then(|c| c.gateway_replicas.clone()),
        protocols,
        last_heartbeat_time: connection
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0.to_string()),
        client_ca: facts.client_ca_expiry(now, warn).map(Into::into),
        client_ca_problem: match &facts.client_ca {
            Some(Err(problem)) => Some(problem.to_string()),
            _ => None,
        },
        agent_certificate: facts.agent_certificate_expiry(now, warn).map(Into::into),
        agents: connection.map(|c| c.agents.clone()).unwrap_or_default(),
    }
}

pub fn report(inventory: &Inventory, now: SystemTime, warn: Duration) -> StatusReport {
    StatusReport {
        planes: inventory.planes.iter().map(|f| row(f, now, warn)).collect(),
        missing_crds: inventory.missing_kinds.iter().map(|k| k.as_str()).collect(),
        invalid: inventory.undecodable.clone(),
    }
}

/// `12s`, `5m`, `3h`, `2d`: how long ago, as kubectl's AGE column says it.
fn age(since: &str, now: SystemTime) -> String {
    let Ok(then) = since.parse::<k8s_openapi::jiff::Timestamp>() else {
        return "?".into();
    };
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let secs = (now - then.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

/// A cell and the colour it is shown in.
struct Cell {
    text: String,
    tone: Tone,
}

#[derive(Clone, Copy)]
enum Tone {
    Plain,
    Good,
    Warn,
    Bad,
}

/// Every cell is made printable: names, planeIDs and reasons come from CRs, which
/// whoever may write them must not use to write to the operator's terminal.
fn cell(text: impl AsRef<str>, tone: Tone) -> Cell {
    Cell {
        text: crate::safe_text::printable(text.as_ref()),
        tone,
    }
}

fn expiry_cell(expiry: Option<&CertificateExpiry>, problem: Option<&str>) -> Cell {
    match (expiry, problem) {
        (_, Some(_)) => cell("invalid", Tone::Bad),
        (None, None) => cell("-", Tone::Plain),
        (Some(e), None) => match e.state {
            ExpiryState::Valid => cell(format!("{}d", e.days_left), Tone::Plain),
            ExpiryState::ExpiringSoon => cell(format!("{}d", e.days_left), Tone::Warn),
            ExpiryState::Expired => cell("expired", Tone::Bad),
        },
    }
}

const HEADERS: [&str; 11] = [
    "KIND",
    "NAMESPACE/NAME",
    "PLANE ID",
    "MODE",
    "READY",
    "REASON",
    "AGENTS",
    "PROTOCOL",
    "HEARTBEAT",
    "CLIENT CA",
    "AGENT CERT",
];

fn cells(row: &PlaneRow, now: SystemTime) -> Vec<Cell> {
    let ready_tone = match row.ready.as_str() {
        "True" => Tone::Good,
        "False" => Tone::Bad,
        _ => Tone::Warn,
    };
    let agent_mode = row.mode == Mode::Agent.as_str();
    let agents = match (&row.gateway_replicas, agent_mode) {
        (_, false) => cell("-", Tone::Plain),
        (Some(replicas), true) => {
            let complete = replicas
                .split_once('/')
                .is_some_and(|(holding, live)| holding == live);
            let tone = match (row.connected_agents, complete) {
                (0, _) => Tone::Bad,
                (_, false) => Tone::Warn,
                _ => Tone::Plain,
            };
            cell(format!("{} on {replicas}", row.connected_agents), tone)
        }
        (None, true) => cell(
            row.connected_agents.to_string(),
            if row.connected_agents == 0 {
                Tone::Bad
            } else {
                Tone::Plain
            },
        ),
    };
    vec![
        cell(row.kind, Tone::Plain),
        cell(format!("{}/{}", row.namespace, row.name), Tone::Plain),
        cell(row.plane_id.clone(), Tone::Plain),
        cell(row.mode, Tone::Plain),
        cell(row.ready.clone(), ready_tone),
        cell(row.reason.as_deref().unwrap_or("-"), Tone::Plain),
        agents,
        cell(
            if row.protocols.is_empty() {
                "-".to_string()
            } else {
                row.protocols.join(",")
            },
            Tone::Plain,
        ),
        cell(
            row.last_heartbeat_time
                .as_deref()
                .map_or("-".to_string(), |t| age(t, now)),
            Tone::Plain,
        ),
        expiry_cell(row.client_ca.as_ref(), row.client_ca_problem.as_deref()),
        expiry_cell(row.agent_certificate.as_ref(), None),
    ]
}

/// The table, columns padded as kubectl pads them (three spaces apart).
pub fn table(report: &StatusReport, now: SystemTime, style: Style) -> String {
    let rows: Vec<Vec<Cell>> = report.planes.iter().map(|r| cells(r, now)).collect();
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.text.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, texts: Vec<String>, plain_lengths: Vec<usize>| {
        let last = texts.len() - 1;
        for (i, (text, len)) in texts.into_iter().zip(plain_lengths).enumerate() {
            out.push_str(&text);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - len + 3));
            }
        }
        out.push('\n');
    };
    line(
        &mut out,
        HEADERS.iter().map(|h| style.bold(h)).collect(),
        HEADERS.iter().map(|h| h.len()).collect(),
    );
    for row in rows {
        let lengths = row.iter().map(|c| c.text.chars().count()).collect();
        let texts = row
            .into_iter()
            .map(|c| match c.tone {
                Tone::Plain => c.text,
                Tone::Good => style.good(&c.text),
                Tone::Warn => style.warn(&c.text),
                Tone::Bad => style.bad(&c.text),
            })
            .collect();
        line(&mut out, texts, lengths);
    }
    if report.planes.is_empty() {
        out.push_str("no planes found\n");
    }
    for kind in &report.missing_crds {
        let _ = writeln!(
            out,
            "{} the {kind} CRD is not installed: `planelink controller crds | kubectl apply --server-side -f -`",
            style.warn("warning:")
        );
    }
    for invalid in &report.invalid {
        let _ = writeln!(
            out,
            "{} not a valid plane: {}",
            style.warn("warning:"),
            crate::safe_text::escape(invalid)
        );
    }
    out
}

async fn gather(client: &kube::Client, args: &StatusArgs) -> Result<StatusReport, String> {
    let kube = &args.kube;
    // Without the gateway's CA, only the check that clientCA is not that CA is skipped.
    let gateway_cas = match facts::gateway_ca(client, &kube.control_plane_namespace).await {
        Ok(Some(secret)) => crate::planes::secret_data(&secret)
            .get("ca.crt")
            .and_then(|pem| trust::parse_certificates(pem).ok())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let namespace = if kube.all_namespaces {
        None
    } else {
        kube.namespace.as_deref()
    };
    let inventory = facts::inventory(client, namespace, &gateway_cas)
        .await
        .map_err(|e| format!("{e:#}"))?;
    Ok(report(&inventory, SystemTime::now(), kube.expiry_warning))
}

fn render(report: &StatusReport, format: StatusFormat, style: Style) -> String {
    match format {
        StatusFormat::Table => table(report, SystemTime::now(), style),
        StatusFormat::Json => serde_json::to_string_pretty(report).unwrap_or_default() + "\n",
        StatusFormat::Yaml => serde_saphyr::to_string(report).unwrap_or_default(),
    }
}

pub fn run(args: StatusArgs) -> u8 {
    super::block_on(async move {
        let client = match super::control_client(&args.kube).await {
            Ok(client) => client,
            Err(message) => {
                eprintln!("error: {message}");
                return 1;
            }
        };
        let style = Style::detect();
        let in_place = args.watch && std::io::stdout().is_terminal();
        loop {
            match gather(&client, &args).await {
                Ok(report) => {
                    let text = render(&report, args.output, style);
                    if in_place {
                        print!("\x1b[H\x1b[2J{text}");
                    } else {
                        print!("{text}");
                        if args.watch {
                            println!();
                        }
                    }
                }
                Err(message) => {
                    eprintln!("error: {message}");
                    if !args.watch {
                        return 1;
                    }
                }
            }
            if !args.watch {
                return 0;
            }
            tokio::time::sleep(args.interval).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(age("1970-01-12T13:46:30Z", now), "10s");
        assert_eq!(age("1970-01-12T13:36:40Z", now), "10m");
        assert_eq!(age("1970-01-12T03:46:40Z", now), "10h");
        assert_eq!(age("1970-01-02T13:46:40Z", now), "10d");
        assert_eq!(age("yesterday", now), "?");
    }
}

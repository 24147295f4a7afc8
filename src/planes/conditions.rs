//! Status conditions: set one, keep its transition time while its status holds, and say
//! which ones changed (for Events).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::Reason;

pub const READY: &str = "Ready";
pub const CONNECTED: &str = "Connected";
pub const GATEWAY_PROVISIONED: &str = "GatewayProvisioned";
pub const CERTIFICATES_CURRENT: &str = "CertificatesCurrent";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    pub fn as_str(self) -> &'static str {
        match self {
            Truth::True => "True",
            Truth::False => "False",
            Truth::Unknown => "Unknown",
        }
    }
}

/// Sets condition `type_`, keeping `lastTransitionTime` unless the status changes.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    truth: Truth,
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) {
    let status = truth.as_str();
    let transition = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.as_str().to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: transition,
    });
    conditions.sort_by_key(|c| order(&c.type_));
}

fn order(type_: &str) -> (usize, String) {
    let rank = [READY, CONNECTED, GATEWAY_PROVISIONED, CERTIFICATES_CURRENT]
        .iter()
        .position(|t| *t == type_)
        .unwrap_or(usize::MAX);
    (rank, type_.to_string())
}

/// Conditions whose status or reason differ from before: each deserves an Event.
pub fn changed<'a>(before: &[Condition], after: &'a [Condition]) -> Vec<&'a Condition> {
    after
        .iter()
        .filter(|new| {
            !before.iter().any(|old| {
                old.type_ == new.type_ && old.status == new.status && old.reason == new.reason
            })
        })
        .collect()
}

#[cfg(test)]
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn transition_time_holds_while_status_holds() {
        let t1 = Time(Timestamp::from_second(1_000).unwrap());
        let t2 = Time(Timestamp::from_second(2_000).unwrap());
        let mut list = Vec::new();
        set(
            &mut list,
            CONNECTED,
            Truth::False,
            Reason::AgentNotConnected,
            "m",
            Some(1),
            &t1,
        );
        set(
            &mut list,
            READY,
            Truth::False,
            Reason::ClientCAMissing,
            "m",
            Some(1),
            &t1,
        );
        let before = list.clone();
        set(
            &mut list,
            CONNECTED,
            Truth::False,
            Reason::AgentNotConnected,
            "m2",
            Some(2),
            &t2,
        );
        assert_eq!(list[0].type_, READY, "Ready sorts first");
        assert_eq!(find(&list, CONNECTED).unwrap().last_transition_time, t1);
        assert!(changed(&before, &list).is_empty());
        set(
            &mut list,
            CONNECTED,
            Truth::True,
            Reason::AgentConnected,
            "m",
            Some(2),
            &t2,
        );
        assert_eq!(find(&list, CONNECTED).unwrap().last_transition_time, t2);
        assert_eq!(changed(&before, &list).len(), 1);
    }
}

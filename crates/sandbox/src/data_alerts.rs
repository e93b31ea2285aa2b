//! Deterministic incidents and alerts, rendered the XDR, MDE and Graph ways.
//!
//! Alert `j` belongs to incident `j % incidents` and to machine `j % machines`, so the
//! collections agree with each other.

use serde_json::{Value, json};

use super::data::{
    ANALYSTS, Counts, Rng, SEVERITIES, created_at, fnv1a, lower_camel, machine_id, machine_name,
};
use super::time::iso8601;

const THREATS: [(&str, &str); 8] = [
    ("Suspicious PowerShell command line", "Execution"),
    (
        "Ransomware behavior detected in the file system",
        "Ransomware",
    ),
    ("Suspicious process injection observed", "DefenseEvasion"),
    ("'Mimikatz' credential theft tool", "CredentialAccess"),
    ("Suspicious scheduled task creation", "Persistence"),
    (
        "Possible lateral movement via remote service creation",
        "LateralMovement",
    ),
    (
        "Connection to a known malicious IP address",
        "CommandAndControl",
    ),
    ("An active 'Emotet' malware was detected", "Malware"),
];
const SOURCES: [(&str, &str); 4] = [
    ("WindowsDefenderAtp", "microsoftDefenderForEndpoint"),
    ("WindowsDefenderAv", "antivirus"),
    ("CustomDetection", "customDetection"),
    ("AutomatedInvestigation", "automatedInvestigation"),
];
const ALERT_STATUS: [&str; 3] = ["New", "InProgress", "Resolved"];
const INCIDENT_STATUS: [&str; 3] = ["Active", "Active", "Resolved"];
const CLASSIFICATION: [&str; 3] = ["Unknown", "FalsePositive", "TruePositive"];
const DETERMINATION: [(&str, &str); 4] = [
    ("NotAvailable", "unknown"),
    ("Malware", "malware"),
    ("SecurityTesting", "securityTesting"),
    ("Other", "other"),
];
const TAGS: [&str; 4] = ["sandbox", "vip", "phishing-campaign", "needs-review"];

/// What every rendering of alert `j` shares.
struct AlertCore {
    id: String,
    incident_id: u64,
    title: &'static str,
    category: &'static str,
    severity: &'static str,
    status: &'static str,
    source: (&'static str, &'static str),
    created: u64,
    machine: usize,
}

fn alert_core(tenant: &str, j: usize, counts: Counts) -> AlertCore {
    let mut rng = Rng::for_item(counts.seed, tenant, "alert", j);
    let (title, category) = THREATS[rng.index(THREATS.len())];
    AlertCore {
        id: format!(
            "da{:018}_{}",
            rng.below(1_000_000_000_000_000_000),
            -(rng.below(1 << 31) as i64)
        ),
        incident_id: incident_id(tenant, j % counts.incidents.max(1)),
        title,
        category,
        severity: rng.pick(&SEVERITIES),
        status: rng.pick(&ALERT_STATUS),
        source: SOURCES[rng.index(SOURCES.len())],
        created: alert_created(tenant, j, counts, &mut rng),
        machine: j % counts.machines.max(1),
    }
}

/// Alerts of an incident are created in its first hour, in index order.
fn alert_created(tenant: &str, j: usize, counts: Counts, rng: &mut Rng) -> u64 {
    let incidents = counts.incidents.max(1);
    let round = (j / incidents) as u64;
    incident_created(counts.seed, tenant, j % incidents)
        + round.saturating_mul(900)
        + rng.below(900)
}

fn incident_created(seed: u64, tenant: &str, i: usize) -> u64 {
    created_at(&mut Rng::for_item(seed, tenant, "incident-time", i), i)
}

/// Numeric incident IDs differ per tenant, so a mixed-up tenant shows.
pub(super) fn incident_id(tenant: &str, index: usize) -> u64 {
    (fnv1a(tenant.bytes()) % 900 + 100) * 1000 + index as u64 + 1
}

/// Alert `j` as MDE's `GET /api/alerts` lists it.
pub(super) fn mde_alert(tenant: &str, j: usize, counts: Counts) -> Value {
    let a = alert_core(tenant, j, counts);
    json!({
        "id": a.id, "incidentId": a.incident_id, "investigationId": Value::Null,
        "assignedTo": Value::Null, "severity": a.severity, "status": a.status,
        "classification": Value::Null, "determination": Value::Null,
        "investigationState": "Queued", "detectionSource": a.source.0, "category": a.category,
        "threatFamilyName": Value::Null, "title": a.title,
        "description": format!("{} was observed on the device.", a.title),
        "alertCreationTime": iso8601(a.created), "firstEventTime": iso8601(a.created.saturating_sub(120)),
        "lastEventTime": iso8601(a.created.saturating_sub(60)), "lastUpdateTime": iso8601(a.created + 600),
        "resolvedTime": Value::Null, "machineId": machine_id(counts.seed, tenant, a.machine),
        "computerDnsName": machine_name(tenant, a.machine), "tenantId": tenant,
    })
}

/// Alert `j` as it appears inside an XDR incident.
fn xdr_incident_alert(tenant: &str, j: usize, counts: Counts) -> Value {
    let a = alert_core(tenant, j, counts);
    json!({
        "alertId": a.id, "incidentId": a.incident_id, "serviceSource": "MicrosoftDefenderForEndpoint",
        "creationTime": iso8601(a.created), "lastUpdatedTime": iso8601(a.created + 600),
        "firstActivity": iso8601(a.created.saturating_sub(120)), "lastActivity": iso8601(a.created.saturating_sub(60)),
        "title": a.title, "category": a.category, "status": a.status, "severity": a.severity,
        "detectionSource": a.source.0, "investigationState": "UnsupportedAlertType",
        "devices": [{
            "mdatpDeviceId": machine_id(counts.seed, tenant, a.machine),
            "deviceDnsName": machine_name(tenant, a.machine),
        }],
        "entities": [],
    })
}

/// Alert `j` as Graph's `GET /v1.0/security/alerts_v2` lists it.
pub(super) fn graph_alert(tenant: &str, j: usize, counts: Counts) -> Value {
    let a = alert_core(tenant, j, counts);
    json!({
        "id": a.id, "providerAlertId": a.id, "incidentId": a.incident_id.to_string(),
        "status": lower_camel(a.status), "severity": lower_camel(a.severity),
        "classification": Value::Null, "determination": Value::Null,
        "serviceSource": "microsoftDefenderForEndpoint", "detectionSource": a.source.1,
        "title": a.title, "category": a.category,
        "description": format!("{} was observed on the device.", a.title),
        "createdDateTime": iso8601(a.created), "lastUpdateDateTime": iso8601(a.created + 600),
        "firstActivityDateTime": iso8601(a.created.saturating_sub(120)),
        "alertWebUrl": format!("https://security.microsoft.com/alerts/{}?tid={tenant}", a.id),
        "incidentWebUrl": format!("https://security.microsoft.com/incidents/{}?tid={tenant}", a.incident_id),
        "tenantId": tenant, "assignedTo": Value::Null, "detectorId": Value::Null,
        "productName": "Microsoft Defender for Endpoint", "recommendedActions": "",
        "actorDisplayName": Value::Null, "threatDisplayName": Value::Null,
        "threatFamilyName": Value::Null, "mitreTechniques": [], "alertPolicyId": Value::Null,
        "lastActivityDateTime": iso8601(a.created.saturating_sub(60)),
        "resolvedDateTime": Value::Null, "comments": [], "systemTags": [], "evidence": [],
    })
}

/// What every rendering of incident `i` shares.
struct IncidentCore {
    id: u64,
    name: String,
    created: u64,
    updated: u64,
    status: &'static str,
    severity: &'static str,
    classification: &'static str,
    determination: (&'static str, &'static str),
    assigned_to: Option<&'static str>,
    tags: Vec<&'static str>,
}

fn incident_core(tenant: &str, i: usize, counts: Counts) -> IncidentCore {
    let mut rng = Rng::for_item(counts.seed, tenant, "incident", i);
    let created = incident_created(counts.seed, tenant, i);
    let first_alert = alert_core(tenant, i, counts);
    IncidentCore {
        id: incident_id(tenant, i),
        name: format!("{} on one endpoint", first_alert.title),
        created,
        updated: created + 3600 + rng.below(86_400),
        status: rng.pick(&INCIDENT_STATUS),
        severity: rng.pick(&SEVERITIES),
        classification: rng.pick(&CLASSIFICATION),
        determination: DETERMINATION[rng.index(DETERMINATION.len())],
        assigned_to: (rng.below(2) == 0).then(|| rng.pick(&ANALYSTS)),
        tags: TAGS.iter().copied().filter(|_| rng.below(4) == 0).collect(),
    }
}

/// Indices of the alerts that belong to incident `i`.
fn alerts_of(i: usize, counts: Counts) -> impl Iterator<Item = usize> {
    (i..counts.alerts).step_by(counts.incidents.max(1))
}

/// Incident `i` as Defender XDR's `GET /api/incidents` lists it.
pub(super) fn xdr_incident(tenant: &str, i: usize, counts: Counts) -> Value {
    let c = incident_core(tenant, i, counts);
    let alerts: Vec<Value> = alerts_of(i, counts)
        .map(|j| xdr_incident_alert(tenant, j, counts))
        .collect();
    json!({
        "incidentId": c.id, "tenantId": tenant, "redirectIncidentId": Value::Null,
        "incidentName": c.name,
        "incidentUri": format!("https://security.microsoft.com/incidents/{}?tid={tenant}", c.id),
        "createdTime": iso8601(c.created), "lastUpdateTime": iso8601(c.updated),
        "assignedTo": c.assigned_to, "classification": c.classification,
        "determination": c.determination.0, "status": c.status, "severity": c.severity,
        "tags": c.tags, "comments": [], "alerts": alerts,
    })
}

/// Incident `i` as Graph's `GET /v1.0/security/incidents` lists it.
pub(super) fn graph_incident(tenant: &str, i: usize, counts: Counts) -> Value {
    let c = incident_core(tenant, i, counts);
    json!({
        "id": c.id.to_string(), "tenantId": tenant, "displayName": c.name,
        "incidentWebUrl": format!("https://security.microsoft.com/incidents/{}?tid={tenant}", c.id),
        "redirectIncidentId": Value::Null,
        "createdDateTime": iso8601(c.created), "lastUpdateDateTime": iso8601(c.updated),
        "assignedTo": c.assigned_to, "classification": lower_camel(c.classification),
        "determination": c.determination.1, "status": lower_camel(c.status),
        "severity": lower_camel(c.severity), "customTags": c.tags, "systemTags": [], "comments": [],
        "description": Value::Null, "summary": Value::Null, "resolvingComment": Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const COUNTS: Counts = Counts {
        incidents: 10,
        alerts: 25,
        machines: 4,
        seed: 0,
    };

    #[test]
    fn incident_lists_its_alerts_which_point_back() {
        let incident = xdr_incident("t", 3, COUNTS);
        let alerts = incident["alerts"].as_array().expect("alerts array");
        assert_eq!(alerts.len(), 3, "alerts 3, 13 and 23");
        let alert = mde_alert("t", 13, COUNTS);
        assert_eq!(alert["incidentId"], incident["incidentId"]);
        assert_eq!(alerts[1]["alertId"], alert["id"]);
    }

    #[test]
    fn graph_renderings_use_graph_spelling() {
        let incident = graph_incident("t", 0, COUNTS);
        assert!(incident["id"].is_string());
        let severity = incident["severity"].as_str().unwrap_or_default();
        assert!(severity.starts_with(|c: char| c.is_ascii_lowercase()));
        assert_eq!(graph_alert("t", 0, COUNTS)["tenantId"], "t");
    }
}

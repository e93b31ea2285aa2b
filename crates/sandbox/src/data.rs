//! Deterministic per-tenant data: a seeded generator, shared vocabulary, and MDE machines.
//!
//! Nothing is stored: item `i` of a tenant's collection is recomputed from a seed made of the
//! tenant, the collection and `i`, so answers are identical across runs and processes.

use std::fmt::Write;

use serde_json::{Value, json};

use super::time::iso8601;

/// 2025-01-01T00:00:00Z: the newest item of every collection is created shortly before it.
pub(super) const BASE_TIME: u64 = 1_735_689_600;

/// What one tenant's data is made from: the sizes of its collections, which link to each
/// other by index, and the seed of the whole data set.
#[derive(Clone, Copy, Debug)]
pub(super) struct Counts {
    pub incidents: usize,
    pub alerts: usize,
    pub machines: usize,
    /// [`super::SandboxOptions::seed`].
    pub seed: u64,
}

/// A splitmix64 generator seeded with FNV-1a of (seed, tenant, kind, index).
pub(super) struct Rng(u64);

impl Rng {
    /// Seed 0 hashes no seed bytes, so its data is the data of the sandbox before seeds.
    pub fn for_item(seed: u64, tenant: &str, kind: &str, index: usize) -> Rng {
        let seed_bytes = (seed != 0).then(|| seed.to_le_bytes());
        let bytes = seed_bytes
            .into_iter()
            .flatten()
            .chain(tenant.bytes())
            .chain(kind.bytes())
            .chain(index.to_le_bytes());
        Rng(fnv1a(bytes))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// An index into a list of `len` items.
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items
            .get(self.index(items.len()))
            .copied()
            .unwrap_or_default()
    }

    pub fn uuid(&mut self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }

    pub fn hex(&mut self, chars: usize) -> String {
        let mut out = String::with_capacity(chars + 16);
        while out.len() < chars {
            let _ = write!(out, "{:016x}", self.next_u64());
        }
        out.truncate(chars);
        out
    }
}

/// FNV-1a, 64 bits.
pub(super) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Creation time of item `index`: newer items first, a few hours apart.
pub(super) fn created_at(rng: &mut Rng, index: usize) -> u64 {
    let age = (index as u64).saturating_mul(3 * 3600) + 3600 + rng.below(3600);
    BASE_TIME.saturating_sub(age)
}

/// `ForwardRef` → `forwardRef`: Graph spells enum members in lower camel case.
pub(super) fn lower_camel(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_ascii_lowercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

pub(super) const SEVERITIES: [&str; 4] = ["Informational", "Low", "Medium", "High"];
pub(super) const ANALYSTS: [&str; 3] = [
    "secops@contoso.com",
    "analyst@contoso.com",
    "soc-tier2@contoso.com",
];

const OS: [(&str, &str, u64); 4] = [
    ("Windows11", "23H2", 22631),
    ("Windows10", "22H2", 19045),
    ("WindowsServer2022", "21H2", 20348),
    ("Linux", "Ubuntu 22.04", 0),
];
const HEALTH: [&str; 4] = ["Active", "Active", "Inactive", "ImpairedCommunication"];
const RISK: [&str; 5] = ["None", "Low", "Medium", "High", "Informational"];
const EXPOSURE: [&str; 3] = ["Low", "Medium", "High"];

/// The 40-hex MDE device ID of machine `index`.
pub(super) fn machine_id(seed: u64, tenant: &str, index: usize) -> String {
    Rng::for_item(seed, tenant, "machine-id", index).hex(40)
}

/// `ws-0007.<tenant prefix>.sandbox.local`.
pub(super) fn machine_name(tenant: &str, index: usize) -> String {
    let kind = ["ws", "srv", "lt"][index % 3];
    let domain: String = tenant.chars().take(8).collect();
    format!("{kind}-{index:04}.t{domain}.sandbox.local")
}

/// Machine `index` of `tenant`, as MDE's `GET /api/machines` lists it.
pub(super) fn machine(seed: u64, tenant: &str, index: usize) -> Value {
    let mut rng = Rng::for_item(seed, tenant, "machine", index);
    let first_seen = created_at(&mut rng, index).saturating_sub(86_400 * 90);
    let last_seen = BASE_TIME - rng.below(86_400 * 3);
    let (os, version, build) = OS[rng.index(OS.len())];
    let octets = (rng.below(250) + 1, rng.below(250) + 1);
    json!({
        "id": machine_id(seed, tenant, index),
        "computerDnsName": machine_name(tenant, index),
        "firstSeen": iso8601(first_seen), "lastSeen": iso8601(last_seen),
        "osPlatform": os, "version": version, "osProcessor": "x64", "osArchitecture": "64-bit",
        "osBuild": if build == 0 { Value::Null } else { json!(build) },
        "lastIpAddress": format!("10.{}.{}.{}", index / 250 % 250, octets.0, octets.1),
        "lastExternalIpAddress": format!("203.0.113.{}", octets.1),
        "agentVersion": "10.8760.22621.1030",
        "healthStatus": rng.pick(&HEALTH), "onboardingStatus": "Onboarded",
        "defenderAvStatus": "Updated", "riskScore": rng.pick(&RISK),
        "exposureLevel": rng.pick(&EXPOSURE), "isAadJoined": rng.below(2) == 0,
        "aadDeviceId": rng.uuid(), "rbacGroupId": 0, "rbacGroupName": Value::Null,
        "machineTags": if rng.below(3) == 0 { json!(["sandbox"]) } else { json!([]) },
        "tenantId": tenant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_are_deterministic_and_per_tenant() {
        assert_eq!(machine(0, "t-a", 3), machine(0, "t-a", 3));
        assert_ne!(machine(0, "t-a", 3)["id"], machine(0, "t-b", 3)["id"]);
        assert_eq!(machine(0, "t-a", 3)["tenantId"], "t-a");
        assert_eq!(machine_id(0, "t-a", 0).len(), 40);
    }

    #[test]
    fn another_seed_makes_other_data() {
        assert_eq!(machine(7, "t-a", 3), machine(7, "t-a", 3));
        assert_ne!(machine(7, "t-a", 3)["id"], machine(0, "t-a", 3)["id"]);
    }

    #[test]
    fn lower_camel_lowers_first_letter() {
        assert_eq!(lower_camel("TruePositive"), "truePositive");
        assert_eq!(lower_camel(""), "");
    }
}

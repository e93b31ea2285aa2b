//! Cloud profiles: the authority host, the API hosts and the default scopes of each Microsoft
//! cloud, so that a route can say `upstream = "xdr"` and get the right host for its cloud.

/// A Microsoft cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    /// Commercial (worldwide).
    Public,
    /// US Government Community Cloud.
    Gcc,
    /// US Government GCC High.
    GccHigh,
    /// US Department of Defense.
    Dod,
    /// Microsoft Azure operated by 21Vianet.
    China,
}

/// An API a route can name instead of a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Microsoft Defender XDR (`api.security.microsoft.com`).
    Xdr,
    /// Microsoft Defender for Endpoint (`api.securitycenter.microsoft.com`).
    Mde,
    /// Microsoft Graph (security API).
    Graph,
}

/// Regions with their own Defender API host.
pub const REGIONS: &[&str] = &["us", "eu", "uk", "au", "swa", "ina", "aea"];

impl Cloud {
    /// Parses a `[cloud] name`.
    pub fn parse(name: &str) -> Option<Cloud> {
        match name {
            "public" => Some(Cloud::Public),
            "gcc" => Some(Cloud::Gcc),
            "gcc-high" => Some(Cloud::GccHigh),
            "dod" => Some(Cloud::Dod),
            "china" => Some(Cloud::China),
            _ => None,
        }
    }

    /// The Entra ID authority for this cloud.
    pub fn authority_host(self) -> &'static str {
        match self {
            Cloud::Public | Cloud::Gcc => "https://login.microsoftonline.com",
            Cloud::GccHigh | Cloud::Dod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.partner.microsoftonline.cn",
        }
    }

    /// The base URL and default scope of `service` in this cloud, optionally regional.
    /// `None` when the service has no known host there (use an explicit URL).
    pub fn service(self, service: Service, region: Option<&str>) -> Option<(String, String)> {
        let host = match (self, service) {
            (Cloud::Public, Service::Xdr | Service::Mde) if region.is_some() => {
                format!("{}.api.security.microsoft.com", region?)
            }
            (_, _) if region.is_some() => return None,
            (Cloud::Public, Service::Xdr) => "api.security.microsoft.com".into(),
            (Cloud::Public, Service::Mde) => "api.securitycenter.microsoft.com".into(),
            (Cloud::Public | Cloud::Gcc, Service::Graph) => "graph.microsoft.com".into(),
            (Cloud::Gcc, Service::Xdr) => "api-gcc.security.microsoft.us".into(),
            (Cloud::Gcc, Service::Mde) => "api-gcc.securitycenter.microsoft.us".into(),
            (Cloud::GccHigh | Cloud::Dod, Service::Xdr) => "api-gov.security.microsoft.us".into(),
            (Cloud::GccHigh | Cloud::Dod, Service::Mde) => {
                "api-gov.securitycenter.microsoft.us".into()
            }
            (Cloud::GccHigh, Service::Graph) => "graph.microsoft.us".into(),
            (Cloud::Dod, Service::Graph) => "dod-graph.microsoft.us".into(),
            (Cloud::China, Service::Graph) => "microsoftgraph.chinacloudapi.cn".into(),
            (Cloud::China, Service::Xdr | Service::Mde) => return None,
        };
        let scope = match (self, service) {
            // Regional hosts take the tokens of the global audience.
            (Cloud::Public, Service::Xdr) => "https://api.security.microsoft.com/.default".into(),
            (Cloud::Public, Service::Mde) => {
                "https://api.securitycenter.microsoft.com/.default".into()
            }
            _ => format!("https://{host}/.default"),
        };
        Some((format!("https://{host}"), scope))
    }
}

impl Service {
    /// Parses a service name as a route's `upstream` gives it.
    pub fn parse(name: &str) -> Option<Service> {
        match name {
            "xdr" => Some(Service::Xdr),
            "mde" => Some(Service::Mde),
            "graph" => Some(Service::Graph),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_services_have_their_documented_hosts_and_scopes() {
        let (url, scope) = Cloud::Public.service(Service::Xdr, None).unwrap();
        assert_eq!(url, "https://api.security.microsoft.com");
        assert_eq!(scope, "https://api.security.microsoft.com/.default");
        let (url, _) = Cloud::Public.service(Service::Mde, None).unwrap();
        assert_eq!(url, "https://api.securitycenter.microsoft.com");
        let (url, scope) = Cloud::Public.service(Service::Graph, None).unwrap();
        assert_eq!(url, "https://graph.microsoft.com");
        assert_eq!(scope, "https://graph.microsoft.com/.default");
    }

    #[test]
    fn regions_pick_the_regional_host_with_the_global_audience() {
        let (url, scope) = Cloud::Public.service(Service::Xdr, Some("eu")).unwrap();
        assert_eq!(url, "https://eu.api.security.microsoft.com");
        assert_eq!(scope, "https://api.security.microsoft.com/.default");
        assert!(Cloud::GccHigh.service(Service::Xdr, Some("eu")).is_none());
    }

    #[test]
    fn government_clouds_use_their_own_hosts_and_authorities() {
        let (url, scope) = Cloud::GccHigh.service(Service::Xdr, None).unwrap();
        assert_eq!(url, "https://api-gov.security.microsoft.us");
        assert_eq!(scope, "https://api-gov.security.microsoft.us/.default");
        assert_eq!(
            Cloud::GccHigh.authority_host(),
            "https://login.microsoftonline.us"
        );
        assert_eq!(
            Cloud::Gcc.authority_host(),
            "https://login.microsoftonline.com"
        );
        let (url, _) = Cloud::Gcc.service(Service::Mde, None).unwrap();
        assert_eq!(url, "https://api-gcc.securitycenter.microsoft.us");
        assert!(Cloud::China.service(Service::Xdr, None).is_none());
    }
}

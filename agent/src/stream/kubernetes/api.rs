//! The pods of this node, from the Kubernetes API: one `GET /api/v1/pods?fieldSelector=
//! spec.nodeName=NODE` with the pod's service-account token, over TLS verified with the
//! service account's CA. What comes back is the API server's (or whoever answers on that
//! address): bounded in size and time, and parsed as data only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// The service account's files, where the kubelet mounts them.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Largest pod list read (a node's pods are a few MB at most).
const MAX_RESPONSE: usize = 64 << 20;
/// One request, from connecting to the last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0} is not set (the agent runs outside a pod? set it, or leave out --kubernetes)")]
    Missing(&'static str),
    #[error("cannot read {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no usable CA certificate")]
    Ca { path: PathBuf },
    #[error("cannot reach the Kubernetes API at {address}: {cause}")]
    Connect { address: String, cause: String },
    #[error("the Kubernetes API answered {status} to the pod list (does the agent's ServiceAccount may list pods?)")]
    Status { status: u16 },
    #[error("the Kubernetes API's pod list is not one: {0}")]
    Parse(String),
    #[error("the Kubernetes API did not answer within {0:?}")]
    Timeout(Duration),
}

/// How to reach the API server from inside a pod.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `host:port`.
    pub address: String,
    pub node: String,
    /// The directory with `token` and `ca.crt`.
    pub service_account: PathBuf,
}

impl ApiConfig {
    /// From the environment the kubelet gives every pod (`KUBERNETES_SERVICE_HOST`,
    /// `KUBERNETES_SERVICE_PORT`), `NODE_NAME` from the downward API, and
    /// `EMBER_KUBERNETES_SERVICE_ACCOUNT` for a service account elsewhere than the kubelet puts it.
    pub fn from_environment() -> Result<Self, ApiError> {
        let var =
            |name: &'static str| std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or(ApiError::Missing(name));
        let host = var("KUBERNETES_SERVICE_HOST")?;
        let port = var("KUBERNETES_SERVICE_PORT")?;
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        Ok(ApiConfig {
            address: format!("{host}:{port}"),
            node: var("NODE_NAME")?,
            service_account: std::env::var_os("EMBER_KUBERNETES_SERVICE_ACCOUNT")
                .map_or_else(|| PathBuf::from(SERVICE_ACCOUNT_DIR), PathBuf::from),
        })
    }
}

/// One pod of the node: its name, namespace, and its containers' names by container id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub containers: HashMap<String, String>,
}

/// The pods of `config.node`, by UID.
pub async fn list_pods(config: &ApiConfig) -> Result<HashMap<String, Pod>, ApiError> {
    tokio::time::timeout(REQUEST_TIMEOUT, fetch(config))
        .await
        .map_err(|_| ApiError::Timeout(REQUEST_TIMEOUT))?
        .and_then(|body| parse(&body))
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, ApiError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|source| ApiError::File { path, source })
}

async fn fetch(config: &ApiConfig) -> Result<Bytes, ApiError> {
    // Read each time: the kubelet rotates the token.
    let token = String::from_utf8_lossy(&read(&config.service_account, "token")?).trim().to_string();
    let ca_path = config.service_account.join("ca.crt");
    let ca = read(&config.service_account, "ca.crt")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca).flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(ApiError::Ca { path: ca_path });
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Connect { address: config.address.clone(), cause: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connect = |cause: String| ApiError::Connect { address: config.address.clone(), cause };
    let host = config.address.rsplit_once(':').map_or(config.address.as_str(), |(h, _)| h);
    let server_name =
        ServerName::try_from(host.trim_matches(['[', ']']).to_string()).map_err(|e| connect(e.to_string()))?;
    let tcp = tokio::net::TcpStream::connect(&config.address).await.map_err(|e| connect(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .map_err(|e| connect(e.to_string()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| connect(e.to_string()))?;
    tokio::spawn(connection);
    let uri = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{}", url_escape(&config.node));
    let request = hyper::Request::get(uri)
        .header(hyper::header::HOST, &config.address)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| connect(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| connect(e.to_string()))?;
    if !response.status().is_success() {
        return Err(ApiError::Status { status: response.status().as_u16() });
    }
    let body = Limited::new(response.into_body(), MAX_RESPONSE).collect().await.map_err(|e| connect(e.to_string()))?;
    Ok(body.to_bytes())
}

/// A node name in a query string (names are DNS labels, but nothing here trusts that).
fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct PodList {
    items: Vec<PodItem>,
}

#[derive(serde::Deserialize)]
struct PodItem {
    metadata: Metadata,
    #[serde(default)]
    status: Option<Status>,
}

#[derive(serde::Deserialize)]
struct Metadata {
    name: String,
    namespace: String,
    uid: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(serde::Deserialize)]
struct ContainerStatus {
    name: String,
    #[serde(default, rename = "containerID")]
    container_id: Option<String>,
}

/// The pod list's JSON, by pod UID; container ids without their `runtime://` prefix.
pub fn parse(body: &[u8]) -> Result<HashMap<String, Pod>, ApiError> {
    let list: PodList = serde_json::from_slice(body).map_err(|e| ApiError::Parse(e.to_string()))?;
    Ok(list
        .items
        .into_iter()
        .map(|item| {
            let status = item.status.unwrap_or_default();
            let containers =
                [status.container_statuses, status.init_container_statuses, status.ephemeral_container_statuses]
                    .into_iter()
                    .flatten()
                    .filter_map(|c| {
                        let id = c.container_id?;
                        let id = id.rsplit_once("://").map_or(id.as_str(), |(_, id)| id).to_ascii_lowercase();
                        Some((id, c.name))
                    })
                    .collect();
            let pod = Pod { name: item.metadata.name, namespace: item.metadata.namespace, containers };
            (item.metadata.uid.to_ascii_lowercase(), pod)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_pod_list() {
        let body = br#"{"kind":"PodList","items":[
            {"metadata":{"name":"web-1","namespace":"shop","uid":"0A1B2C3D-4E5F-6789-ABCD-EF0123456789"},
             "status":{"containerStatuses":[{"name":"app","containerID":"containerd://ABC"},
                                            {"name":"waiting"}]}},
            {"metadata":{"name":"pending","namespace":"shop","uid":"u2"}}]}"#;
        let pods = parse(body).expect("a pod list");
        let web = &pods["0a1b2c3d-4e5f-6789-abcd-ef0123456789"];
        assert_eq!((web.name.as_str(), web.namespace.as_str()), ("web-1", "shop"));
        assert_eq!(web.containers.get("abc").map(String::as_str), Some("app"));
        assert_eq!(web.containers.len(), 1, "a container without an id yet is left out");
        assert!(pods["u2"].containers.is_empty());
    }

    #[test]
    fn refuses_what_is_not_a_pod_list() {
        for body in [&b"<html>"[..], b"{}", b"{\"items\":[{\"metadata\":{}}]}", b""] {
            assert!(matches!(parse(body), Err(ApiError::Parse(_))), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn escapes_node_names() {
        assert_eq!(url_escape("node-1.zone"), "node-1.zone");
        assert_eq!(url_escape("a b&c=d"), "a%20b%26c%3Dd");
    }
}

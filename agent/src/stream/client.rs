//! The gRPC connection to the collector: TLS (rustls) with an optional client certificate,
//! a bearer token, gzip. Connects lazily, so a collector that is down at start is not an error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ember_proto::v1::ingest_client::IngestClient;
use ember_proto::v1::{Ack, Batch};
use tonic::codec::CompressionEncoding;
use tonic::codegen::http::Uri;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid collector URL {url:?}: {reason}. Use http://host:port or https://host:port")]
    Url { url: String, reason: String },
    #[error("cannot read {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("--tls-cert and --tls-key go together")]
    HalfIdentity,
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("the token contains characters not allowed in a header")]
    Token,
}

#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Client = IngestClient<InterceptedService<Channel, Bearer>>;

fn read(path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::File { path: path.clone(), source })
}

pub fn connect(url: &str, options: &ClientOptions) -> Result<Client, ClientError> {
    connect_to(url, None, options)
}

/// A client for the collector at `url`; with `address`, connected to that address of the
/// URL's host (one of those its name resolves to), still speaking to the host by name (the
/// `:authority` header and, with TLS, the certificate's name).
pub fn connect_to(url: &str, address: Option<SocketAddr>, options: &ClientOptions) -> Result<Client, ClientError> {
    let bad = |reason: String| ClientError::Url { url: url.to_string(), reason };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad("the scheme must be http or https".into()));
    }
    let uri: Uri = url.parse().map_err(|e: tonic::codegen::http::uri::InvalidUri| bad(e.to_string()))?;
    let host = uri.host().ok_or_else(|| bad("no host".into()))?.trim_matches(['[', ']']).to_string();
    let target = match address {
        Some(addr) => format!("{}://{addr}", uri.scheme_str().unwrap_or("http")),
        None => url.to_string(),
    };
    let mut endpoint = Endpoint::from_shared(target)
        .map_err(|e| bad(e.to_string()))?
        .origin(uri.clone())
        .connect_timeout(Duration::from_secs(5))
        // Longer than a collector's own deadline for a call (`--grpc-request-timeout`, 60 s), so
        // a slow store gets an answer from the collector rather than a resend to the next one.
        .timeout(Duration::from_secs(75))
        .tcp_keepalive(Some(Duration::from_secs(30)));
    let tls_wanted = url.starts_with("https://") || options.tls_ca.is_some() || options.tls_cert.is_some();
    if tls_wanted {
        let mut tls = ClientTlsConfig::new().domain_name(host);
        tls = match &options.tls_ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => tls.with_webpki_roots(),
        };
        match (&options.tls_cert, &options.tls_key) {
            (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?)),
            (None, None) => {}
            _ => return Err(ClientError::HalfIdentity),
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| ClientError::Tls(e.to_string()))?;
    }
    let token = match &options.token {
        Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| ClientError::Token)?),
        None => None,
    };
    let channel = endpoint.connect_lazy();
    Ok(IngestClient::with_interceptor(channel, Bearer(token))
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip))
}

pub async fn push(client: &mut Client, batch: Batch) -> Result<Ack, Status> {
    client.push(batch).await.map(tonic::Response::into_inner)
}

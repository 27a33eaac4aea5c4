//! The collectors an agent may send to: every `--collector` URL, and every address an
//! `http://` URL's host name resolves to (a Kubernetes headless service, a DNS name with
//! several records). A batch
//! that fails on one goes to the next at once; only when every one has failed since the last
//! success does the sender back off, and names are resolved again then. Collectors that share
//! a store (ClickHouse) drop repeats by (agent id, sequence), so a batch resent to another one
//! is never counted twice.

use std::net::SocketAddr;

use tonic::codegen::http::Uri;

use super::client::{self, Client, ClientError, ClientOptions};

pub struct Collectors {
    urls: Vec<String>,
    options: ClientOptions,
    targets: Vec<Target>,
    current: usize,
    failed_in_a_row: usize,
}

struct Target {
    /// The URL, and the address it was resolved to, for the log.
    name: String,
    client: Client,
}

impl Collectors {
    /// One target per URL until [`Collectors::resolve`] runs; every URL is checked now.
    pub fn new(urls: Vec<String>, options: ClientOptions) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::Url { url: String::new(), reason: "no --collector given".into() });
        }
        let targets = urls
            .iter()
            .map(|url| Ok(Target { name: url.clone(), client: client::connect(url, &options)? }))
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Self { urls, options, targets, current: 0, failed_in_a_row: 0 })
    }

    /// Expands each `http://` URL into the addresses its host resolves to now. A name that
    /// does not resolve stays as it is (the connection will say why it fails), and so does an
    /// `https://` one: a TLS connection to an address did not verify against the name (tonic
    /// 0.14), so there the name is resolved per connection, one address at a time.
    pub async fn resolve(&mut self) {
        let mut targets = Vec::new();
        for url in &self.urls {
            let addresses = if url.starts_with("http://") { addresses_of(url).await } else { Vec::new() };
            if addresses.len() <= 1 {
                if let Ok(client) = client::connect(url, &self.options) {
                    targets.push(Target { name: url.clone(), client });
                }
                continue;
            }
            for addr in addresses {
                if let Ok(client) = client::connect_to(url, Some(addr), &self.options) {
                    targets.push(Target { name: format!("{url} ({addr})"), client });
                }
            }
        }
        if !targets.is_empty() {
            let before = self.targets.get(self.current).map(|t| t.name.clone());
            self.targets = targets;
            self.current = before.and_then(|b| self.targets.iter().position(|t| t.name == b)).unwrap_or(0);
        }
    }

    /// The collector to send to now, and its name (a client shares its connection).
    pub fn current(&self) -> (&str, Client) {
        let target = &self.targets[self.current % self.targets.len().max(1)];
        (&target.name, target.client.clone())
    }

    /// Moves on after a failure. True when every collector has failed since the last success:
    /// time to back off (and resolve names again).
    pub fn failed(&mut self) -> bool {
        self.failed_in_a_row += 1;
        self.current = (self.current + 1) % self.targets.len().max(1);
        if self.failed_in_a_row >= self.targets.len() {
            self.failed_in_a_row = 0;
            return true;
        }
        false
    }

    pub fn succeeded(&mut self) {
        self.failed_in_a_row = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.targets.len()
    }
}

/// The addresses a collector URL's host resolves to, sorted and without repeats.
async fn addresses_of(url: &str) -> Vec<SocketAddr> {
    let Ok(uri) = url.parse::<Uri>() else { return Vec::new() };
    let Some(host) = uri.host().map(|h| h.trim_matches(['[', ']']).to_string()) else { return Vec::new() };
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let Ok(found) = tokio::net::lookup_host((host.as_str(), port)).await else { return Vec::new() };
    let mut addresses: Vec<SocketAddr> = found.collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_collector_is_tried_before_backing_off() {
        let urls = vec!["http://127.0.0.1:1".to_string(), "http://127.0.0.1:2".to_string()];
        let mut c = Collectors::new(urls, ClientOptions::default()).expect("valid");
        c.resolve().await;
        assert_eq!(c.len(), 2);
        assert_eq!(c.current().0, "http://127.0.0.1:1");
        assert!(!c.failed(), "one left to try");
        assert_eq!(c.current().0, "http://127.0.0.1:2");
        assert!(c.failed(), "all failed: back off");
        assert_eq!(c.current().0, "http://127.0.0.1:1");
        c.succeeded();
        assert!(!c.failed());
    }

    #[tokio::test]
    async fn a_name_with_several_addresses_is_several_collectors() {
        // `localhost` resolves to 127.0.0.1 and, where configured, ::1.
        let mut c = Collectors::new(vec!["http://localhost:7070".into()], ClientOptions::default()).expect("valid");
        c.resolve().await;
        let expected = addresses_of("http://localhost:7070").await.len().max(1);
        assert_eq!(c.len(), expected);
        assert!(Collectors::new(vec!["ftp://x".into()], ClientOptions::default()).is_err());
    }
}

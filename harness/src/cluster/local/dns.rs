//! Cluster DNS, a stand-in for CoreDNS (no package of it exists here): a small UDP server in
//! the harness, on the pod bridge's gateway address, answering `A` queries for
//! `<service>.<namespace>.svc.<domain>` with the Service's cluster IP, from a list of the
//! Services refreshed every second. Every other name in the cluster domain is `NXDOMAIN`;
//! names outside it are `REFUSED` (no forwarding: the rehearsal's pods reach only Services).
//! See "Cluster DNS" in `simcluster/SIMULATION.md` for how it differs from CoreDNS.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// The cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

type Records = Arc<RwLock<HashMap<String, Ipv4Addr>>>;

/// The running server; stopped on drop.
#[derive(Debug)]
pub(crate) struct DnsServer {
    serve: JoinHandle<()>,
    refresh: JoinHandle<()>,
}

impl DnsServer {
    /// Binds `addr` (UDP) and serves the Services `client` lists.
    pub(crate) async fn start(client: kube::Client, addr: SocketAddr) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        let records: Records = Arc::default();
        let refresh = tokio::spawn(refresh(client, records.clone()));
        let serve = tokio::spawn(serve(socket, records));
        Ok(Self { serve, refresh })
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.serve.abort();
        self.refresh.abort();
    }
}

async fn refresh(client: kube::Client, records: Records) {
    let api: kube::Api<Service> = kube::Api::all(client);
    loop {
        match api.list(&kube::api::ListParams::default()).await {
            Ok(list) => {
                let mut fresh = HashMap::new();
                for svc in list.items {
                    let (Some(name), Some(ns)) = (svc.metadata.name, svc.metadata.namespace) else {
                        continue;
                    };
                    let ip = svc
                        .spec
                        .and_then(|s| s.cluster_ip)
                        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
                    if let Some(ip) = ip {
                        fresh.insert(format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}"), ip);
                    }
                }
                *records
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
            }
            Err(err) => tracing::warn!(error = %err, "cluster DNS: cannot list Services"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn serve(socket: UdpSocket, records: Records) {
    let mut buf = [0u8; 1500];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                tracing::warn!(error = %err, "cluster DNS: receive failed");
                continue;
            }
        };
        let reply = {
            let records = records
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            answer(&buf[..len], |name| records.get(name).copied())
        };
        if let Some(reply) = reply
            && let Err(err) = socket.send_to(&reply, peer).await
        {
            tracing::warn!(error = %err, %peer, "cluster DNS: send failed");
        }
    }
}

const TYPE_A: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_REFUSED: u16 = 5;
const RCODE_FORMERR: u16 = 1;

/// The reply to one query packet, `None` when it is not a query worth answering (a reply, or
/// too short to carry an id). `lookup` maps a lowercase name without the final dot to its
/// address.
pub(crate) fn answer(query: &[u8], lookup: impl Fn(&str) -> Option<Ipv4Addr>) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let flags = u16::from_be_bytes([query[2], query[3]]);
    let opcode = (flags >> 11) & 0xf;
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    let question = if opcode == 0 && qdcount == 1 {
        parse_question(&query[12..])
    } else {
        None
    };
    // QR, the query's opcode and RD, AA (this server is the cluster domain's authority).
    let mut reply_flags = 0x8000 | (flags & 0x7900) | 0x0400;
    let Some((name, qtype, question_len)) = question else {
        reply_flags |= RCODE_FORMERR;
        let mut reply = query[..12].to_vec();
        reply[2..4].copy_from_slice(&reply_flags.to_be_bytes());
        reply[4..12].fill(0);
        return Some(reply);
    };
    let in_domain = name == CLUSTER_DOMAIN || name.ends_with(&format!(".{CLUSTER_DOMAIN}"));
    let address = lookup(&name);
    let rcode = match (in_domain, address) {
        (false, _) => RCODE_REFUSED,
        (true, None) => RCODE_NXDOMAIN,
        (true, Some(_)) => 0,
    };
    reply_flags |= rcode;
    let answers = u16::from(address.is_some() && qtype == TYPE_A);
    let mut reply = Vec::with_capacity(12 + question_len + 16);
    reply.extend_from_slice(&query[..2]);
    reply.extend_from_slice(&reply_flags.to_be_bytes());
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&answers.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(&query[12..12 + question_len]);
    if let (1, Some(ip)) = (answers, address) {
        reply.extend_from_slice(&[0xc0, 12]); // the name, by pointer to the question
        reply.extend_from_slice(&TYPE_A.to_be_bytes());
        reply.extend_from_slice(&1u16.to_be_bytes()); // IN
        reply.extend_from_slice(&5u32.to_be_bytes()); // TTL: Services come and go
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

/// The question's name (lowercase, no final dot), type, and length in bytes.
fn parse_question(bytes: &[u8]) -> Option<(String, u16, usize)> {
    let mut labels = Vec::new();
    let mut at = 0;
    loop {
        let len = usize::from(*bytes.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None; // compression has no place in a question
        }
        let label = bytes.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]);
    bytes.get(at + 2..at + 4)?;
    Some((labels.join("."), qtype, at + 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    fn check(name: &str, qtype: u16) -> (u16, Vec<u8>) {
        let lookup = |n: &str| {
            (n == "postgresql-service.titanium-prod.svc.cluster.local")
                .then_some(Ipv4Addr::new(10, 96, 0, 7))
        };
        let q = query(name, qtype);
        let reply = answer(&q, lookup).unwrap();
        assert_eq!(&reply[..2], &[0x12, 0x34], "the id is echoed");
        let rcode = u16::from_be_bytes([reply[2], reply[3]]) & 0xf;
        (rcode, reply[q.len()..].to_vec())
    }

    #[test]
    fn a_service_name_resolves_to_its_cluster_ip_in_any_case() {
        let (rcode, answer) = check("PostgreSQL-Service.titanium-prod.svc.cluster.local", 1);
        assert_eq!(rcode, 0);
        assert_eq!(&answer[answer.len() - 4..], &[10, 96, 0, 7]);
    }

    #[test]
    fn unknown_names_other_types_and_foreign_domains_get_no_address() {
        assert_eq!(
            check("nope.titanium-prod.svc.cluster.local", 1),
            (3, vec![])
        );
        assert_eq!(
            check("postgresql-service.titanium-prod.svc.cluster.local", 28),
            (0, vec![]),
            "AAAA of a Service: no data, not an error"
        );
        assert_eq!(check("example.com", 1), (5, vec![]));
    }

    #[test]
    fn garbage_is_a_format_error_and_replies_are_ignored() {
        let reply = answer(
            &[0xab, 0xcd, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9, b'x'],
            |_| None,
        )
        .unwrap();
        assert_eq!(reply[3] & 0xf, 1);
        assert!(answer(&[0xab, 0xcd, 0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0], |_| None).is_none());
    }
}

//! A DNS server for tests: answers A queries for one name with an address the test sets (and
//! may change), with a TTL of 0 so that no resolver keeps an old answer. Every other question
//! gets an empty answer (AAAA of the name) or NXDOMAIN (other names).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

pub(crate) struct TestDns {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Ipv4Addr>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    /// Starts answering `name` with `address` on a UDP port of 127.0.0.1.
    pub async fn start(name: &str, address: Ipv4Addr) -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(address));
        let mut name = Name::from_ascii(name).unwrap().to_lowercase();
        name.set_fqdn(true);
        let current = answer.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let address = *current.lock().unwrap();
                let reply = respond(&query, &name, address);
                let _ = socket.send_to(&reply.to_vec().unwrap(), peer).await;
            }
        });
        TestDns { addr, answer, task }
    }

    /// Answers with `address` from now on.
    pub fn set(&self, address: Ipv4Addr) {
        *self.answer.lock().unwrap() = address;
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(query: &Message, name: &Name, address: Ipv4Addr) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    let mut known = false;
    for question in &query.queries {
        reply.add_query(question.clone());
        let mut asked = question.name().to_lowercase();
        asked.set_fqdn(true);
        if &asked != name {
            continue;
        }
        known = true;
        if question.query_type() == RecordType::A {
            reply.add_answer(Record::from_rdata(
                question.name().clone(),
                0,
                RData::A(A(address)),
            ));
        }
    }
    if !known {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    reply
}

//! Cluster DNS benchmark: queries per second and latency of `baton dns` answering A queries for
//! Services of a 1,000-Service cluster over UDP, from one client (two threads of blocking
//! queries, as a pod's resolver and a tool like dnsperf with few outstanding queries would
//! ask). Reference measured in the same run: a UDP echo server on the same loopback, the cost
//! of the round trip alone. Runs on 127.0.0.1.
//!
//! `CARGO_TARGET_DIR=/var/cache/baton/bench-target cargo bench --bench dns`

#[allow(dead_code)] // memory_mib is for the node benchmark.
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use baton_dns::{Forwarder, Index, SharedIndex, Zone, serve};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use support::quantile;

const SERVICES: usize = 1_000;
const CLIENT_THREADS: usize = 2;
const RUN: Duration = Duration::from_secs(5);

fn services() -> Vec<Service> {
    (0..SERVICES)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": { "name": format!("svc-{i}"), "namespace": "bench" },
                "spec": { "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                          "ports": [{ "name": "http", "port": 80 }] },
            }))
            .expect("service")
        })
        .collect()
}

/// An A query for `name` with id `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.extend_from_slice(&[0, 0, 1, 0, 1]);
    out
}

/// Queries `server` from several threads for `RUN`: (queries per second, p50, p99, errors).
fn load(server: SocketAddr, check_answer: bool) -> (f64, Duration, Duration, usize) {
    let started = Instant::now();
    let handles: Vec<_> = (0..CLIENT_THREADS)
        .map(|thread| {
            std::thread::spawn(move || {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("client socket");
                socket.connect(server).expect("connect");
                socket
                    .set_read_timeout(Some(Duration::from_secs(1)))
                    .expect("timeout");
                let mut times = Vec::new();
                let mut errors = 0;
                let mut buffer = [0u8; 512];
                let mut i = 0usize;
                while started.elapsed() < RUN {
                    let id = (i as u16).wrapping_add(thread as u16 * 30_000);
                    let name = format!("svc-{}.bench.svc.cluster.local", i % SERVICES);
                    let begin = Instant::now();
                    socket.send(&query(id, &name)).expect("send");
                    match socket.recv(&mut buffer) {
                        Ok(n) if n >= 12 && buffer[..2] == id.to_be_bytes() => {
                            // One answer, RCODE 0.
                            let ok = !check_answer || (buffer[3] & 0x0f == 0 && buffer[7] == 1);
                            if ok {
                                times.push(begin.elapsed());
                            } else {
                                errors += 1;
                            }
                        }
                        _ => errors += 1,
                    }
                    i += 1;
                }
                (times, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for handle in handles {
        let (times, failed) = handle.join().expect("client thread");
        all.extend(times);
        errors += failed;
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (rate, quantile(&all, 0.5), quantile(&all, 0.99), errors)
}

/// A UDP echo server: the round trip without any DNS work.
fn echo_server() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("echo socket");
    let address = socket.local_addr().expect("address");
    std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buffer) {
            let _ = socket.send_to(&buffer[..n], peer);
        }
    });
    address
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let zone = Zone::new("cluster.local", 30).expect("zone");
    let services = services();
    let slices: Vec<EndpointSlice> = Vec::new();
    let index = SharedIndex::new(Index::build(zone, &services, &slices, 1));
    let unused_upstream: SocketAddr = "127.0.0.1:9".parse().expect("address");
    let server = runtime
        .block_on(serve(
            "127.0.0.1:0".parse().expect("address"),
            index,
            Forwarder::new(vec![unused_upstream], Duration::from_secs(1)),
        ))
        .expect("serve");
    let address = server.local_addr();
    let (rate, p50, p99, errors) = load(address, true);
    let (echo_rate, echo_p50, echo_p99, _) = load(echo_server(), false);
    println!("# cluster DNS ({SERVICES} Services, {CLIENT_THREADS} client threads, 2 cores)\n");
    println!("| server | queries/s | p50 | p99 | failed |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| baton dns, A for a Service | {rate:.0} | {} | {} | {errors} |",
        us(p50),
        us(p99)
    );
    println!(
        "| reference: UDP echo on the same loopback | {echo_rate:.0} | {} | {} | |",
        us(echo_p50),
        us(echo_p99)
    );
    drop(runtime);
}

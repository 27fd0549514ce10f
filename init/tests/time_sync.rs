//! Init's SNTP client against a real NTP server: Debian's chronyd, serving its local clock
//! (`local stratum 8`, and `-x`: it never touches the clock itself) on loopback in a network
//! namespace of the test's. Only the query is tested here: setting the clock would set this
//! host's. chronyd is killed and the namespace goes with the test; it opens no command socket
//! (`cmdport 0`, `bindcmdaddress /`), so a host chronyd's is left alone.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use baton_init::time_sync::{Sample, first_sample, query};
use baton_network::NetNs;
use support::Server;

const CHRONYD: &str = "/usr/sbin/chronyd";

mod support;

/// chronyd, killed when dropped.
fn start_chronyd(namespace: &NetNs, dir: &std::path::Path) -> Server {
    let conf = dir.join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "local stratum 8\nallow 127.0.0.1\nbindaddress 127.0.0.1\nport 123\ncmdport 0\nbindcmdaddress /\npidfile {}\n",
            dir.join("chronyd.pid").display()
        ),
    )
    .unwrap();
    namespace
        .run(|| {
            let mut socket = baton_network::RouteSocket::open().unwrap();
            socket
                .set_link(baton_network::LOOPBACK_INDEX, None, None)
                .unwrap();
            Command::new(CHRONYD)
                .args(["-d", "-x", "-u", "root", "-f"])
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map(Server)
        })
        .unwrap()
        .unwrap()
}

/// Asks until chronyd answers usably (it starts unsynchronized, then serves its local clock).
fn first_good_answer(namespace: &NetNs, server: SocketAddr) -> Sample {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match namespace.run(|| query(server)).unwrap() {
            Ok(sample) => return sample,
            Err(err) => assert!(
                Instant::now() < deadline,
                "no usable answer: {}",
                baton_client::error_chain(&err)
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_client_reads_a_real_server_s_time_and_skips_a_silent_one() {
    assert!(
        std::path::Path::new(CHRONYD).exists(),
        "chronyd is missing: scripts/setup installs chrony"
    );
    let dir = tempfile::tempdir().unwrap();
    let namespace = NetNs::create().unwrap();
    let _chronyd = start_chronyd(&namespace, dir.path());
    let server = SocketAddr::from(([127, 0, 0, 1], 123));
    let sample = first_good_answer(&namespace, server);
    // chronyd serves this host's own clock: the offset is the measuring error, and the round
    // trip stays on loopback.
    assert_eq!(sample.stratum, 8, "{sample:?}");
    assert!(sample.offset_nanos.abs() < 500_000_000, "{sample:?}");
    assert!((0..500_000_000).contains(&sample.delay_nanos), "{sample:?}");

    // Servers are asked in order: one where nothing listens is passed over.
    let (chosen, _) = namespace
        .run(|| first_sample(&["127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap()]))
        .unwrap()
        .unwrap();
    assert_eq!(chosen.to_string(), "127.0.0.1");
    let err = namespace
        .run(|| first_sample(&["127.0.0.2".parse().unwrap()]))
        .unwrap()
        .unwrap_err();
    let text = baton_client::error_chain(&err);
    assert!(
        text.starts_with("no time server answered (machine.time.servers): asking 127.0.0.2:123"),
        "{text}"
    );
}

//! kube-rs as a client of `baton apiserver` on a real etcd: watch resume, 410 Gone after
//! compaction, no lost update under concurrent writers, and paged lists over 1000 objects.

use std::collections::BTreeSet;
use std::time::Duration;

use baton_test_harness::{ApiServer, Binary, Etcd, wait_until};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};

fn binary() -> Binary {
    Binary(env!("CARGO_BIN_EXE_baton").into())
}

fn configmap(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some([("v".to_string(), value.to_string())].into()),
        ..Default::default()
    }
}

fn api_status(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Reads the next `n` watch events as (type, name, value).
async fn next_events<S>(stream: &mut S, n: usize) -> Vec<(String, String, String)>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin,
{
    let mut out = vec![];
    while out.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("watch event in time")
            .expect("stream open")
            .expect("event");
        let (kind, cm) = match event {
            WatchEvent::Added(cm) => ("ADDED", cm),
            WatchEvent::Modified(cm) => ("MODIFIED", cm),
            WatchEvent::Deleted(cm) => ("DELETED", cm),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        };
        let value = cm
            .data
            .unwrap_or_default()
            .get("v")
            .cloned()
            .unwrap_or_default();
        out.push((
            kind.to_string(),
            cm.metadata.name.unwrap_or_default(),
            value,
        ));
    }
    out
}

fn ev(kind: &str, name: &str, value: &str) -> (String, String, String) {
    (kind.into(), name.into(), value.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_a_resource_version() {
    let etcd = Etcd::start().await.unwrap();
    let server = ApiServer::start(&binary(), &etcd.url(), &[]).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().await.unwrap(), "default");
    let created = api
        .create(&PostParams::default(), &configmap("a", "0"))
        .await
        .unwrap();
    let rv = created.metadata.resource_version.unwrap();

    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    api.replace("a", &PostParams::default(), &{
        let mut cm = api.get("a").await.unwrap();
        cm.data = Some([("v".to_string(), "1".to_string())].into());
        cm
    })
    .await
    .unwrap();
    api.create(&PostParams::default(), &configmap("b", "0"))
        .await
        .unwrap();
    let seen = next_events(&mut stream, 2).await;
    assert_eq!(seen, [ev("MODIFIED", "a", "1"), ev("ADDED", "b", "0")]);
    drop(stream);

    // Changes while no one watches are delivered when the client resumes from its last RV.
    let last_rv = api
        .get("b")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.delete("a", &Default::default()).await.unwrap();
    api.create(&PostParams::default(), &configmap("c", "0"))
        .await
        .unwrap();
    let mut resumed = api
        .watch(&WatchParams::default(), &last_rv)
        .await
        .unwrap()
        .boxed();
    assert_eq!(
        next_events(&mut resumed, 2).await,
        [ev("DELETED", "a", "1"), ev("ADDED", "c", "0")]
    );

    // A label-selected watch sees an object leave its selection as DELETED.
    let mut labelled = configmap("d", "0");
    labelled.metadata.labels = Some([("team".to_string(), "x".to_string())].into());
    let d = api.create(&PostParams::default(), &labelled).await.unwrap();
    let mut selected = api
        .watch(
            &WatchParams::default().labels("team=x"),
            d.metadata.resource_version.as_deref().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    let mut d = api.get("d").await.unwrap();
    d.metadata.labels = None;
    api.replace("d", &PostParams::default(), &d).await.unwrap();
    assert_eq!(
        next_events(&mut selected, 1).await,
        [ev("DELETED", "d", "0")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_resource_versions_answer_410_gone() {
    let etcd = Etcd::start().await.unwrap();
    // The API server compacts etcd itself, as kube-apiserver does (--etcd-compaction-interval).
    let server = ApiServer::start(
        &binary(),
        &etcd.url(),
        &["--etcd-compaction-interval=300ms"],
    )
    .await
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().await.unwrap(), "default");
    let first = api
        .create(&PostParams::default(), &configmap("x", "0"))
        .await
        .unwrap();
    let old_rv = first.metadata.resource_version.unwrap();
    for i in 1..=5 {
        let mut cm = api.get("x").await.unwrap();
        cm.data = Some([("v".to_string(), i.to_string())].into());
        api.replace("x", &PostParams::default(), &cm).await.unwrap();
    }
    // An exact list at a compacted revision is 410 Expired.
    let exact = ListParams::default()
        .at(&old_rv)
        .matching(kube::api::VersionMatch::Exact);
    let status = wait_until(
        "etcd history to be compacted past the first revision",
        Duration::from_secs(20),
        || {
            let api = api.clone();
            let exact = exact.clone();
            async move { api.list(&exact).await.err().map(api_status) }
        },
    )
    .await
    .unwrap();
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));

    // A watch from before the compaction ends with an ERROR event: 410 Expired.
    let mut stream = api
        .watch(&WatchParams::default(), &old_rv)
        .await
        .unwrap()
        .boxed();
    let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match event {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_lose_nothing() {
    let etcd = Etcd::start().await.unwrap();
    let server = ApiServer::start(&binary(), &etcd.url(), &[]).await.unwrap();
    let client = server.client().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let created = api
        .create(&PostParams::default(), &configmap("counter", "0"))
        .await
        .unwrap();

    // A stale resourceVersion is refused with 409 Conflict.
    let mut stale = created.clone();
    let mut fresh = created.clone();
    fresh.data = Some(
        [
            ("v".to_string(), "0".to_string()),
            ("touched".to_string(), "yes".to_string()),
        ]
        .into(),
    );
    api.replace("counter", &PostParams::default(), &fresh)
        .await
        .unwrap();
    stale.data = Some([("v".to_string(), "stale".to_string())].into());
    let status = api_status(
        api.replace("counter", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));

    // 8 writers x 15 increments, each a read-modify-write retried on conflict.
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move {
                let mut conflicts = 0;
                for _ in 0..15 {
                    loop {
                        let mut cm = api.get("counter").await.unwrap();
                        let data = cm.data.get_or_insert_with(Default::default);
                        let n: u32 = data["v"].parse().unwrap();
                        data.insert("v".into(), (n + 1).to_string());
                        match api.replace("counter", &PostParams::default(), &cm).await {
                            Ok(_) => break,
                            Err(kube::Error::Api(s)) if s.code == 409 => conflicts += 1,
                            Err(e) => panic!("update failed: {e}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for w in writers {
        conflicts += w.await.unwrap();
    }
    let final_value = api.get("counter").await.unwrap().data.unwrap()["v"].clone();
    assert_eq!(
        final_value, "120",
        "lost updates ({conflicts} conflicts seen)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_over_a_thousand_objects_at_one_revision() {
    let etcd = Etcd::start().await.unwrap();
    let server = ApiServer::start(&binary(), &etcd.url(), &[]).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().await.unwrap(), "default");
    futures::stream::iter(0..1000)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(
                    &PostParams::default(),
                    &configmap(&format!("cm-{i:04}"), "0"),
                )
                .await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();

    let mut names = BTreeSet::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    let mut first_rv = None;
    loop {
        let mut params = ListParams::default().limit(100);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = api.list(&params).await.unwrap();
        pages += 1;
        if pages == 1 {
            first_rv = page.metadata.resource_version.clone();
            assert_eq!(page.metadata.remaining_item_count, Some(900));
            // Objects created after the first page are not part of this list.
            api.create(&PostParams::default(), &configmap("zz-late", "0"))
                .await
                .unwrap();
        } else {
            assert_eq!(
                page.metadata.resource_version, first_rv,
                "pages come from one snapshot"
            );
        }
        for cm in page.items {
            assert!(names.insert(cm.metadata.name.unwrap()), "duplicate item");
        }
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 10);
    assert_eq!(names.len(), 1000);
    assert!(!names.contains("zz-late"));
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1001
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_advance_on_a_quiet_resource() {
    use k8s_openapi::api::core::v1::Secret;
    let etcd = Etcd::start().await.unwrap();
    let server = ApiServer::start(&binary(), &etcd.url(), &[]).await.unwrap();
    let client = server.client().await.unwrap();
    let quiet: Api<Secret> = Api::namespaced(client.clone(), "default");
    let rv = quiet
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = quiet
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            },
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    // Another resource changes: the store's revision moves on, the secrets do not.
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let other = cms
        .create(&PostParams::default(), &configmap("elsewhere", "0"))
        .await
        .unwrap();
    let moved_to: u64 = other.metadata.resource_version.unwrap().parse().unwrap();
    let bookmark = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            match stream.next().await {
                Some(Ok(WatchEvent::Bookmark(b))) => {
                    let at: u64 = b.metadata.resource_version.parse().unwrap();
                    if at >= moved_to {
                        return at;
                    }
                }
                Some(Ok(other)) => panic!("unexpected event {other:?}"),
                other => panic!("watch ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a bookmark at the store's newer revision");
    assert!(bookmark >= moved_to);
}

/// The inodes of this process's TCP sockets connected to `port` on loopback.
fn sockets_to(port: u16) -> BTreeSet<u64> {
    let own: BTreeSet<u64> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = u16::from_str_radix(fields[2].split(':').nth(1)?, 16).ok()?;
            // 01: ESTABLISHED.
            let inode: u64 = fields[9].parse().ok()?;
            (remote_port == port && fields[3] == "01" && own.contains(&inode)).then_some(inode)
        })
        .collect()
}

/// The in-tree components' client (`baton_client`) speaks HTTP/2, as client-go does: its
/// watches and requests in flight share one connection, where kube-rs's own HTTP/1.1 client
/// needs one connection each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_component_client_multiplexes_watches_and_requests_over_one_connection() {
    let etcd = Etcd::start().await.unwrap();
    let server = ApiServer::start(&binary(), &etcd.url(), &[]).await.unwrap();
    let port: u16 = server.url().rsplit(':').next().unwrap().parse().unwrap();
    let before = sockets_to(port);

    let config = baton_client::load_config(Some(&server.kubeconfig()), "client-test")
        .await
        .unwrap();
    let client = baton_client::client(&config).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut watches = Vec::new();
    for _ in 0..4 {
        let stream = api
            .watch(&WatchParams::default(), "0")
            .await
            .unwrap()
            .boxed();
        watches.push(stream);
    }
    // Requests while the four watches are open, some at once.
    let creates = (0..8).map(|i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &configmap(&format!("m{i}"), "0"))
                .await
        }
    });
    for created in futures::future::join_all(creates).await {
        created.unwrap();
    }
    // Every watch sees every object, so all four streams are live.
    for stream in &mut watches {
        let mut names = BTreeSet::new();
        while names.len() < 8 {
            match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                Ok(Some(Ok(WatchEvent::Added(cm)))) => {
                    names.insert(cm.metadata.name.unwrap());
                }
                other => panic!("watch event: {other:?}"),
            }
        }
    }
    let opened: Vec<u64> = sockets_to(port).difference(&before).copied().collect();
    assert_eq!(
        opened.len(),
        1,
        "four watches and eight requests over one connection, got {opened:?}"
    );
}

/// A change etcd sends as one message over gRPC's default 4 MiB limit (here a prefix delete of
/// 5 MiB of objects, as `etcdctl del --prefix` makes) reaches watchers, and later changes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_etcd_change_over_four_mebibytes_reaches_watchers() {
    let etcd = Etcd::start().await.unwrap();
    let server = ApiServer::start(&binary(), &etcd.url(), &[]).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().await.unwrap(), "default");
    let large = "x".repeat(900_000);
    let mut names = vec![];
    let mut last_rv = String::new();
    for i in 0..6 {
        let name = format!("large-{i}");
        let created = api
            .create(&PostParams::default(), &configmap(&name, &large))
            .await
            .unwrap();
        last_rv = created.metadata.resource_version.unwrap();
        names.push(name);
    }
    let mut stream = api
        .watch(&WatchParams::default(), &last_rv)
        .await
        .unwrap()
        .boxed();

    let etcd_client = etcd_client::Client::connect([etcd.url()], None)
        .await
        .unwrap();
    let deleted = etcd_client
        .kv_client()
        .delete(
            "/registry/configmaps/default/large-",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 6);
    api.create(&PostParams::default(), &configmap("after", "0"))
        .await
        .unwrap();

    let seen: Vec<(String, String)> = next_events(&mut stream, 7)
        .await
        .into_iter()
        .map(|(kind, name, _)| (kind, name))
        .collect();
    let mut expected: Vec<(String, String)> = names
        .iter()
        .map(|name| ("DELETED".to_string(), name.clone()))
        .collect();
    expected.push(("ADDED".to_string(), "after".to_string()));
    assert_eq!(seen, expected);
}

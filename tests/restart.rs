//! Restarting the API server and etcd mid-test: every object is still there, and watchers that
//! resume from their last resourceVersion miss no event.

use std::time::Duration;

use baton_test_harness::{ApiServer, Binary, Etcd, wait_until};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams, WatchEvent, WatchParams};

fn configmap(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Collects ADDED names from a watch until `want` names were seen (or fails).
async fn added_names(api: &Api<ConfigMap>, rv: &str, want: usize) -> (Vec<String>, String) {
    let mut stream = api
        .watch(&WatchParams::default(), rv)
        .await
        .unwrap()
        .boxed();
    let mut names = vec![];
    let mut last = rv.to_string();
    while names.len() < want {
        let event = tokio::time::timeout(Duration::from_secs(15), stream.next())
            .await
            .expect("event in time")
            .expect("open")
            .expect("ok");
        if let WatchEvent::Added(cm) = event {
            last = cm.metadata.resource_version.clone().unwrap();
            names.push(cm.metadata.name.unwrap());
        }
    }
    (names, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_and_watches_survive_restarts() {
    let mut etcd = Etcd::start().await.unwrap();
    let mut server = ApiServer::start(
        &Binary(env!("CARGO_BIN_EXE_baton").into()),
        &etcd.url(),
        &[],
    )
    .await
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().await.unwrap(), "default");
    let first = api
        .create(&PostParams::default(), &configmap("before"))
        .await
        .unwrap();
    let rv = first.metadata.resource_version.unwrap();

    // The API server restarts; a change made right after is seen by a watch resumed from rv.
    server.restart().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client().await.unwrap(), "default");
    assert!(
        api.get("before").await.is_ok(),
        "object lost across an API server restart"
    );
    api.create(&PostParams::default(), &configmap("after-apiserver"))
        .await
        .unwrap();
    let (names, last) = added_names(&api, &rv, 1).await;
    assert_eq!(names, ["after-apiserver"]);

    // etcd restarts under a running API server: it reconnects, and nothing is lost.
    etcd.restart().await.unwrap();
    wait_until(
        "the API server to write through the restarted etcd",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &configmap("after-etcd"))
                    .await
                    .ok()
            }
        },
    )
    .await
    .unwrap();
    assert!(api.get("before").await.is_ok());
    assert!(api.get("after-apiserver").await.is_ok());
    let (names, _) = added_names(&api, &last, 1).await;
    assert_eq!(names, ["after-etcd"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_talks_to_etcd_over_mutual_tls() {
    let (etcd, tls) = Etcd::start_tls().await.unwrap();
    let flags = [
        format!("--etcd-cafile={}", tls.ca.display()),
        format!("--etcd-certfile={}", tls.cert.display()),
        format!("--etcd-keyfile={}", tls.key.display()),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = ApiServer::start(
        &Binary(env!("CARGO_BIN_EXE_baton").into()),
        &etcd.url(),
        &flags,
    )
    .await
    .unwrap();
    assert!(etcd.url().starts_with("https://"));
    let api: Api<ConfigMap> = Api::namespaced(server.client().await.unwrap(), "default");
    api.create(&PostParams::default(), &configmap("over-tls"))
        .await
        .unwrap();
    assert!(api.get("over-tls").await.is_ok());
}

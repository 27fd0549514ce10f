//! Restarting the API server and etcd mid-test: every object is still there, and watchers that
//! resume from their last resourceVersion miss no event. Several API servers on one etcd: each
//! backs the `kubernetes` Service while it runs; one told to stop removes itself, one killed
//! drops out when its record expires.

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

/// The `kubernetes` Endpoints and EndpointSlice addresses, each sorted.
async fn kubernetes_endpoints(client: &kube::Client) -> (Vec<String>, Vec<String>) {
    use k8s_openapi::api::core::v1::Endpoints;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let endpoints = Api::<Endpoints>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap();
    let mut from_endpoints: Vec<String> = endpoints
        .subsets
        .unwrap_or_default()
        .iter()
        .flat_map(|s| s.addresses.clone().unwrap_or_default())
        .map(|a| a.ip)
        .collect();
    let slice = Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap();
    let mut from_slice: Vec<String> = slice
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.clone())
        .collect();
    from_endpoints.sort();
    from_slice.sort();
    (from_endpoints, from_slice)
}

/// Waits until the `kubernetes` Endpoints and EndpointSlice both list exactly `want`.
async fn endpoints_become(client: &kube::Client, want: &[&str], what: &str, timeout: Duration) {
    let want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
    wait_until(what, timeout, || {
        let client = client.clone();
        let want = want.clone();
        async move { (kubernetes_endpoints(&client).await == (want.clone(), want)).then_some(()) }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_server_on_one_etcd_backs_the_kubernetes_service_while_it_runs() {
    let etcd = Etcd::start().await.unwrap();
    let binary = Binary(env!("CARGO_BIN_EXE_baton").into());
    let first = ApiServer::start(&binary, &etcd.url(), &["--advertise-address=10.1.0.1"])
        .await
        .unwrap();
    let mut second = ApiServer::start(&binary, &etcd.url(), &["--advertise-address=10.1.0.2"])
        .await
        .unwrap();
    let client = first.client().await.unwrap();
    endpoints_become(
        &client,
        &["10.1.0.1", "10.1.0.2"],
        "both API servers in the kubernetes endpoints",
        Duration::from_secs(30),
    )
    .await;

    // The second is told to stop (SIGTERM): it removes itself before it exits.
    let pid = nix::unistd::Pid::from_raw(second.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    endpoints_become(
        &client,
        &["10.1.0.1"],
        "the API server told to stop to remove itself from the kubernetes endpoints",
        Duration::from_secs(5),
    )
    .await;
    second.stop();

    // A third one dies without a word (SIGKILL): its record expires 15 s after its last
    // renewal, and it drops out.
    let mut third = ApiServer::start(&binary, &etcd.url(), &["--advertise-address=10.1.0.3"])
        .await
        .unwrap();
    endpoints_become(
        &client,
        &["10.1.0.1", "10.1.0.3"],
        "the third API server in the kubernetes endpoints",
        Duration::from_secs(30),
    )
    .await;
    third.stop();
    endpoints_become(
        &client,
        &["10.1.0.1"],
        "the killed API server to drop out of the kubernetes endpoints",
        Duration::from_secs(45),
    )
    .await;
}

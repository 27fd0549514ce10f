//! API semantics a client relies on, through kube-rs and raw requests: authentication, status
//! codes and their Status bodies, defaulting, dry runs, generateName, strict field validation,
//! Service address allocation, graceful pod deletion, finalizers, subresources and discovery.

use std::collections::BTreeSet;

use baton_test_harness::{ApiServer, Binary, Etcd};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

async fn start() -> (Etcd, ApiServer, kube::Client) {
    let etcd = Etcd::start().await.unwrap();
    let server = ApiServer::start(
        &Binary(env!("CARGO_BIN_EXE_baton").into()),
        &etcd.url(),
        &[],
    )
    .await
    .unwrap();
    let client = server.client().await.unwrap();
    (etcd, server, client)
}

/// Sends a raw request; returns (status, body as JSON or text).
async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", content_type)
        .body(body)
        .unwrap();
    let resp = client
        .send(req.map(kube::client::Body::from))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = http_body_util_collect(resp).await;
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

async fn http_body_util_collect(resp: http::Response<kube::client::Body>) -> Vec<u8> {
    use http_body_util::BodyExt;
    resp.into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

/// A client that does not retry 503s (kube-rs retries them by default).
async fn no_retry(server: &ApiServer) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "containers": [{ "name": "c", "image": "busybox" }] },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_client_certificate_get_401() {
    let (_etcd, server, _client) = start().await;
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.auth_info.client_certificate_data = None;
    config.auth_info.client_key_data = None;
    let anonymous = kube::Client::try_from(config).unwrap();
    let (status, body) = raw(
        &anonymous,
        "GET",
        "/api/v1/namespaces",
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Unauthorized");
    // Health endpoints answer anyway, as upstream's do for probes.
    let (status, body) = raw(&anonymous, "GET", "/readyz", "text/plain", vec![]).await;
    assert_eq!((status, body), (200, Value::String("ok".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_status_objects_and_refused_writes_change_nothing() {
    let (_etcd, _server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // 404 for a missing object and for a missing namespace.
    let (status, body) = raw(
        &client,
        "GET",
        "/api/v1/namespaces/default/configmaps/nope",
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str(), body["message"].as_str()),
        (404, Some("NotFound"), Some("configmaps \"nope\" not found"))
    );
    let (status, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/ghost/configmaps",
        "application/json",
        br#"{"metadata":{"name":"x"}}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (404, Some("namespaces \"ghost\" not found"))
    );

    // 400 for an undecodable body, 409 for a duplicate, 422 naming the field.
    let (status, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!((status, body["reason"].as_str()), (400, Some("BadRequest")));
    let (status, _) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        br#"{"metadata":{"name":"one"},"data":{"a":1}}"#.to_vec(),
    )
    .await;
    assert_eq!(
        status, 400,
        "a number where a string belongs does not decode"
    );
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "one"}})).unwrap(),
    )
    .await
    .unwrap();
    let (status, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        br#"{"metadata":{"name":"one"}}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str(), body["message"].as_str()),
        (
            409,
            Some("AlreadyExists"),
            Some("configmaps \"one\" already exists")
        )
    );
    let (status, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        br#"{"metadata":{"name":"Not_Valid"}}"#.to_vec(),
    )
    .await;
    assert_eq!((status, body["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(body["details"]["causes"][0]["field"], "metadata.name");

    // 413 for bodies over 3 MiB.
    let big = format!(
        r#"{{"metadata":{{"name":"big"}},"data":{{"x":"{}"}}}}"#,
        "a".repeat(3 * 1024 * 1024 + 10)
    );
    let (status, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        big.into_bytes(),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (413, Some("RequestEntityTooLarge"))
    );

    // Unknown fields: refused under Strict, dropped (with a warning) otherwise.
    let body = br#"{"metadata":{"name":"strict"},"dataa":{"a":"1"}}"#.to_vec();
    let (status, resp) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
        "application/json",
        body.clone(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        resp["message"]
            .as_str()
            .unwrap()
            .contains(r#"unknown field "dataa""#),
        "{resp}"
    );
    let (status, resp) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        body,
    )
    .await;
    assert_eq!(status, 201);
    assert!(resp.get("dataa").is_none());

    // Nothing refused was stored.
    let names: BTreeSet<String> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["one".to_string(), "strict".to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_defaults_dry_run_and_generate_name() {
    let (_etcd, _server, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let dry = pods
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &pod("dry"),
        )
        .await
        .unwrap();
    assert_eq!(
        dry.spec.as_ref().unwrap().restart_policy.as_deref(),
        Some("Always")
    );
    assert!(
        pods.get_opt("dry").await.unwrap().is_none(),
        "dry run stored the pod"
    );

    let mut generated = pod("");
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("web-".into());
    let created = pods
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    let spec = created.spec.unwrap();
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    assert_eq!(spec.scheduler_name.as_deref(), Some("default-scheduler"));
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("Always")
    );
    let tolerations = spec.tolerations.unwrap();
    assert!(tolerations.iter().any(
        |t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")
            && t.toleration_seconds == Some(300)
    ));
    let status = created.status.unwrap();
    assert_eq!(
        (status.phase.as_deref(), status.qos_class.as_deref()),
        (Some("Pending"), Some("BestEffort"))
    );
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());

    // ServiceAccount admission: the account's image pull secrets go to pods naming none; a
    // pod's own are kept; an account that does not exist changes nothing.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "default");
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "robot" },
                "imagePullSecrets": [{ "name": "robot-registry" }],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let secrets_of = |pod: &Pod| -> Vec<String> {
        pod.spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .map(|r| r.name.clone())
            .collect()
    };
    let as_robot = |name: &str, own: Value| {
        let mut pod: Value = serde_json::to_value(pod(name)).unwrap();
        pod["spec"]["serviceAccountName"] = json!("robot");
        pod["spec"]["imagePullSecrets"] = own;
        serde_json::from_value::<Pod>(pod).unwrap()
    };
    let inherited = pods
        .create(&PostParams::default(), &as_robot("robot-1", json!([])))
        .await
        .unwrap();
    assert_eq!(secrets_of(&inherited), ["robot-registry"]);
    let own = pods
        .create(
            &PostParams::default(),
            &as_robot("robot-2", json!([{ "name": "mine" }])),
        )
        .await
        .unwrap();
    assert_eq!(secrets_of(&own), ["mine"]);
    let mut orphan = as_robot("orphan", json!([]));
    orphan.spec.as_mut().unwrap().service_account_name = Some("nobody".into());
    let orphan = pods.create(&PostParams::default(), &orphan).await.unwrap();
    assert!(secrets_of(&orphan).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_unique_addresses_released_on_delete() {
    let (_etcd, server, client) = start().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");

    // The kubernetes Service points at this API server, as upstream's endpoint reconciler does.
    let port = server
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<i32>()
        .unwrap();
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(client.clone(), "default");
    let subset = endpoints
        .get("kubernetes")
        .await
        .unwrap()
        .subsets
        .unwrap()
        .remove(0);
    assert_eq!(subset.addresses.unwrap()[0].ip, "127.0.0.1");
    assert_eq!(subset.ports.unwrap()[0].port, port);
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), "default");
    let slice = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(slice.endpoints[0].addresses, vec!["127.0.0.1".to_string()]);
    assert_eq!(slice.ports.unwrap()[0].port, Some(port));
    let svc = |name: &str, ty: &str| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"type": ty, "selector": {"app": name}, "ports": [{"port": 80}]}})).unwrap()
    };
    let mut ips = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for i in 0..20 {
        let created = svcs
            .create(&PostParams::default(), &svc(&format!("s{i}"), "NodePort"))
            .await
            .unwrap();
        let spec = created.spec.unwrap();
        let ip = spec.cluster_ip.clone().unwrap();
        assert!(
            ip.starts_with("10.9") || ip.starts_with("10.10") || ip.starts_with("10.11"),
            "{ip} outside 10.96.0.0/12"
        );
        assert!(ips.insert(ip), "ClusterIP handed out twice");
        let port = spec.ports.as_ref().unwrap()[0].node_port.unwrap();
        assert!((30000..=32767).contains(&port));
        assert!(node_ports.insert(port), "NodePort handed out twice");
        assert_eq!(spec.ports_target_port_or_default(), 80);
    }
    // A taken address is refused; once its Service is gone, it can be had again.
    let taken = svcs
        .get("s0")
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();
    let mut wants = svc("again", "ClusterIP");
    wants.spec.as_mut().unwrap().cluster_ip = Some(taken.clone());
    let err = svcs
        .create(&PostParams::default(), &wants)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422),
        "{err:?}"
    );
    svcs.delete("s0", &DeleteParams::default()).await.unwrap();
    let again = svcs.create(&PostParams::default(), &wants).await.unwrap();
    assert_eq!(again.spec.unwrap().cluster_ip.unwrap(), taken);
    // An update that omits the ClusterIP keeps it.
    let mut updated = svcs.get("s1").await.unwrap();
    let before = updated.spec.as_ref().unwrap().cluster_ip.clone();
    updated.spec.as_mut().unwrap().cluster_ip = None;
    updated.spec.as_mut().unwrap().cluster_ips = None;
    let after = svcs
        .replace("s1", &PostParams::default(), &updated)
        .await
        .unwrap();
    assert_eq!(after.spec.unwrap().cluster_ip, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_load_balancers_hold_a_health_check_node_port() {
    let (_etcd, _server, client) = start().await;
    let svcs: Api<Service> = Api::namespaced(client, "default");
    let lb = |name: &str, policy: &str, extra: serde_json::Value| -> Service {
        let mut spec = json!({"type": "LoadBalancer", "externalTrafficPolicy": policy, "selector": {"app": name}, "ports": [{"port": 80}]});
        baton_test_harness::merge_json(&mut spec, extra);
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    let health_port = |svc: &Service| svc.spec.as_ref().unwrap().health_check_node_port;
    let refused = |err: kube::Error, text: &str| match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains(text), "{}", status.message);
        }
        other => panic!("{other:?}"),
    };

    // Local gets a health check node port from the NodePort range, besides the NodePort.
    let web = svcs
        .create(&PostParams::default(), &lb("web", "Local", json!({})))
        .await
        .unwrap();
    let port = health_port(&web).expect("a health check node port");
    assert!((30000..=32767).contains(&port));
    assert_ne!(
        Some(port),
        web.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port
    );
    // Cluster gets none.
    let wide = svcs
        .create(&PostParams::default(), &lb("wide", "Cluster", json!({})))
        .await
        .unwrap();
    assert_eq!(health_port(&wide), None);

    // Refused: the port where it does not belong, a taken port, an unknown policy.
    let err = svcs
        .create(
            &PostParams::default(),
            &lb("where", "Cluster", json!({"healthCheckNodePort": 31999})),
        )
        .await
        .unwrap_err();
    refused(
        err,
        "spec.healthCheckNodePort: Invalid value: 31999: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
    );
    let err = svcs
        .create(
            &PostParams::default(),
            &lb("twice", "Local", json!({"healthCheckNodePort": port})),
        )
        .await
        .unwrap_err();
    refused(
        err,
        &format!(
            "spec.healthCheckNodePort: Invalid value: {port}: provided port is already allocated"
        ),
    );
    // An empty policy is unset: defaulted to Cluster.
    let empty = svcs
        .create(&PostParams::default(), &lb("empty", "", json!({})))
        .await
        .unwrap();
    assert_eq!(
        empty.spec.unwrap().external_traffic_policy.as_deref(),
        Some("Cluster")
    );
    let err = svcs
        .create(&PostParams::default(), &lb("odd", "Sometimes", json!({})))
        .await
        .unwrap_err();
    refused(
        err,
        "spec.externalTrafficPolicy: Unsupported value: \"Sometimes\"",
    );

    // The policy is for Services reached from outside only; one that stops being reached from
    // outside drops the policy it had.
    let internal: Service = serde_json::from_value(json!({"metadata": {"name": "internal"}, "spec": {"type": "ClusterIP", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}})).unwrap();
    let err = svcs
        .create(&PostParams::default(), &internal)
        .await
        .unwrap_err();
    refused(
        err,
        "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for externally-accessible services",
    );
    let inward = svcs
        .patch(
            "wide",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .unwrap();
    let inward = inward.spec.unwrap();
    assert_eq!(inward.external_traffic_policy, None);
    assert_eq!(inward.ports.unwrap()[0].node_port, None);

    // An update that leaves it out keeps it; one that changes it is refused.
    let mut replaced = svcs.get("web").await.unwrap();
    replaced.spec.as_mut().unwrap().health_check_node_port = None;
    let replaced = svcs
        .replace("web", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(health_port(&replaced), Some(port));
    let other = if port == 32767 { 30000 } else { port + 1 };
    let err = svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"healthCheckNodePort": other}})),
        )
        .await
        .unwrap_err();
    refused(
        err,
        "spec.healthCheckNodePort: Forbidden: field is immutable",
    );

    // Cluster gives it up (another Service may take it), Local takes one again.
    let cluster = svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"externalTrafficPolicy": "Cluster"}})),
        )
        .await
        .unwrap();
    assert_eq!(health_port(&cluster), None);
    let taker = svcs
        .create(
            &PostParams::default(),
            &lb("taker", "Local", json!({"healthCheckNodePort": port})),
        )
        .await
        .unwrap();
    assert_eq!(health_port(&taker), Some(port));
    let local = svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"externalTrafficPolicy": "Local"}})),
        )
        .await
        .unwrap();
    let again = health_port(&local).expect("a new health check node port");
    assert_ne!(again, port);

    // Deleting the Service releases it.
    svcs.delete("taker", &DeleteParams::default())
        .await
        .unwrap();
    let node_port: Service = serde_json::from_value(json!({"metadata": {"name": "np"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}})).unwrap();
    svcs.create(&PostParams::default(), &node_port)
        .await
        .unwrap();
}

trait TargetPort {
    fn ports_target_port_or_default(&self) -> i32;
}

impl TargetPort for k8s_openapi::api::core::v1::ServiceSpec {
    fn ports_target_port_or_default(&self) -> i32 {
        match self.ports.as_ref().and_then(|p| p[0].target_port.clone()) {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i)) => i,
            _ => 0,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_deletion_finalizers_and_subresources() {
    let (_etcd, server, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("bound"))
        .await
        .unwrap();

    // Binding sets the node once; a second binding conflicts.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "bound"}, "target": {"kind": "Node", "name": "node-1"}});
    let (status, _) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/pods/bound/binding",
        "application/json",
        binding.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/pods/bound/binding",
        "application/json",
        binding.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        pods.get("bound")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .as_deref(),
        Some("node-1")
    );

    // The status subresource changes only status; the main resource ignores status.
    let patched = pods
        .patch_status(
            "bound",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}, "spec": {"nodeName": "other"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(patched.spec.unwrap().node_name.as_deref(), Some("node-1"));
    let patched = pods
        .patch(
            "bound",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().phase.as_deref(), Some("Running"));

    // A pod on a node is deleted gracefully: marked, not removed (its kubelet finishes it).
    pods.delete("bound", &DeleteParams::default())
        .await
        .unwrap();
    let marked = pods.get("bound").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
    pods.delete(
        "bound",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        pods.get_opt("bound").await.unwrap().is_none(),
        "grace period 0 removes it"
    );

    // Finalizers hold an object until they are removed.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    assert!(
        cms.get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("held").await.unwrap().is_none());

    // Scale subresource and generation bookkeeping.
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})).unwrap();
    let d = deploys.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    let scale = deploys.get_scale("d").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    assert_eq!(scale.status.unwrap().selector.as_deref(), Some("a=b"));
    deploys
        .patch_scale(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    let d = deploys.get("d").await.unwrap();
    assert_eq!(
        (d.spec.unwrap().replicas, d.metadata.generation),
        (Some(3), Some(2))
    );
    // A label change is not a spec change.
    let d = deploys
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(2));

    // pods/log goes to the node's kubelet: for a node that does not exist, 404 naming it.
    pods.create(&PostParams::default(), &pod("logs"))
        .await
        .unwrap();
    raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/pods/logs/binding",
        "application/json",
        json!({"target": {"name": "node-1"}})
            .to_string()
            .into_bytes(),
    )
    .await;
    let (status, body) = raw(
        &no_retry(&server).await,
        "GET",
        "/api/v1/namespaces/default/pods/logs/log",
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["message"], "nodes \"node-1\" not found", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_version_openapi_and_metrics() {
    let (_etcd, _server, client) = start().await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );
    let groups = client.list_api_groups().await.unwrap();
    let names: Vec<&str> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    for g in [
        "apps",
        "batch",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "events.k8s.io",
    ] {
        assert!(names.contains(&g), "{g} missing from {names:?}");
    }
    let (status, index) = raw(&client, "GET", "/openapi/v3", "application/json", vec![]).await;
    assert_eq!(status, 200);
    let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, doc) = raw(&client, "GET", &url, "application/json", vec![]).await;
    assert_eq!(status, 200);
    assert!(
        doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]["properties"]["spec"]
            .is_object()
    );
    // Resource requests are counted and timed by verb and resource, creates' etcd time too.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "counted"}})).unwrap(),
    )
    .await
    .unwrap();
    cms.get("counted").await.unwrap();
    let (status, metrics) = raw(&client, "GET", "/metrics", "text/plain", vec![]).await;
    assert_eq!(status, 200);
    let text = metrics.as_str().unwrap();
    for line in [
        "apiserver_request_total{code=\"201\",resource=\"configmaps\",verb=\"CREATE\"} 1",
        "apiserver_request_total{code=\"200\",resource=\"configmaps\",verb=\"GET\"} 1",
        "apiserver_request_duration_seconds_count{resource=\"configmaps\",verb=\"CREATE\"} 1",
        "etcd_request_duration_seconds_count{operation=\"create\",type=\"configmaps\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_share_storage_between_core_and_events_k8s_io() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event as NewEvent;
    use kube::api::{WatchEvent, WatchParams};

    let (_etcd, _server, client) = start().await;
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let new: Api<NewEvent> = Api::namespaced(client.clone(), "default");

    // Recorded through events.k8s.io, read through core/v1.
    let recorded: NewEvent = serde_json::from_value(json!({
        "metadata": {"name": "started.1"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "baton.dev/kubelet", "reportingInstance": "node-1",
        "action": "Started", "reason": "Started", "type": "Normal", "note": "Started container web",
        "regarding": {"kind": "Pod", "name": "web-0", "namespace": "default"},
    }))
    .unwrap();
    let rv = new
        .create(&PostParams::default(), &recorded)
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let seen = core.get("started.1").await.unwrap();
    assert_eq!(seen.message.as_deref(), Some("Started container web"));
    assert_eq!(seen.involved_object.name.as_deref(), Some("web-0"));
    assert_eq!(
        seen.reporting_component.as_deref(),
        Some("baton.dev/kubelet")
    );

    // Recorded through core/v1, listed and watched through events.k8s.io.
    let mut watch = new
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let old: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "pulled.1"},
        "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "default"},
        "reason": "Pulled", "message": "Container image pulled", "type": "Normal", "count": 1,
        "source": {"component": "kubelet"},
    }))
    .unwrap();
    core.create(&PostParams::default(), &old).await.unwrap();
    let listed = new.list(&ListParams::default()).await.unwrap();
    let pulled = listed
        .items
        .iter()
        .find(|e| e.metadata.name.as_deref() == Some("pulled.1"))
        .expect("listed");
    assert_eq!(pulled.note.as_deref(), Some("Container image pulled"));
    assert_eq!(
        pulled.regarding.as_ref().unwrap().name.as_deref(),
        Some("web-1")
    );
    assert_eq!(pulled.deprecated_count, Some(1));
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match event {
        WatchEvent::Added(e) => assert_eq!(e.note.as_deref(), Some("Container image pulled")),
        other => panic!("expected ADDED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_rules_follow_upstream() {
    use futures::StreamExt;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{WatchEvent, WatchParams};

    let (_etcd, _server, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // A pod in graceful termination survives status updates until its kubelet deletes it.
    pods.create(&PostParams::default(), &pod("term"))
        .await
        .unwrap();
    raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/pods/term/binding",
        "application/json",
        json!({"target": {"name": "n1"}}).to_string().into_bytes(),
    )
    .await;
    pods.delete("term", &DeleteParams::default()).await.unwrap();
    pods.patch_status(
        "term",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    assert!(
        pods.get_opt("term").await.unwrap().is_some(),
        "a status update deleted a terminating pod"
    );

    // A body naming another uid is a failed precondition (a recreated object of the same name).
    let mut stale = pods.get("term").await.unwrap();
    stale.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    stale.metadata.resource_version = None;
    let err = pods
        .replace("term", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.message.contains("Precondition failed: UID in precondition")),
        "{err:?}"
    );

    // Deleting a ConfigMap answers with a Status; a PUT creates a missing Lease.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "gone"}})).unwrap(),
    )
    .await
    .unwrap();
    let deleted = cms.delete("gone", &DeleteParams::default()).await.unwrap();
    assert!(
        deleted.is_right(),
        "expected a Status for a deleted ConfigMap"
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let lease: Lease = serde_json::from_value(
        json!({"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a"}}),
    )
    .unwrap();
    leases
        .replace("leader", &PostParams::default(), &lease)
        .await
        .unwrap();
    assert_eq!(
        leases
            .get("leader")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("a")
    );

    // A namespace's spec.finalizers change only through /finalize.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"finalizers": []}})),
        )
        .await
        .unwrap();
    assert_eq!(
        ns.spec.unwrap().finalizers,
        Some(vec!["kubernetes".to_string()])
    );

    // A named watch sees only that object; a metadata watch gets PartialObjectMetadata.
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut named = cms
        .watch(&WatchParams::default().fields("metadata.name=b"), &rv)
        .await
        .unwrap()
        .boxed();
    let mut metadata = cms
        .watch_metadata(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    for name in ["a", "b"] {
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}}))
                .unwrap(),
        )
        .await
        .unwrap();
    }
    match tokio::time::timeout(std::time::Duration::from_secs(10), named.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Added(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("b")),
        other => panic!("{other:?}"),
    }
    match tokio::time::timeout(std::time::Duration::from_secs(10), metadata.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Added(meta) => assert_eq!(meta.metadata.name.as_deref(), Some("a")),
        other => panic!("{other:?}"),
    }
    let (_, line) = raw(
        &client,
        "GET",
        &format!(
            "/api/v1/namespaces/default/configmaps/a?watch=1&resourceVersion={rv}&timeoutSeconds=1"
        ),
        "application/json",
        vec![],
    )
    .await;
    let text = line
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| line.to_string());
    assert!(
        text.contains("\"name\":\"a\"") && !text.contains("\"name\":\"b\""),
        "{text}"
    );

    // A NodePort taken by one Service cannot be set on another by an update.
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = |name: &str| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}})).unwrap()
    };
    let first = svcs
        .create(&PostParams::default(), &svc("np1"))
        .await
        .unwrap();
    let taken = first.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    svcs.create(&PostParams::default(), &svc("np2"))
        .await
        .unwrap();
    let err = svcs
        .patch(
            "np2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ports": [{"port": 80, "nodePort": taken}]}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_owns_finalizers_value_by_value() {
    let (_etcd, _server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let apply = |finalizers: Vec<&str>| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared", "finalizers": finalizers}});
    cms.patch(
        "shared",
        &PatchParams::apply("controller-a"),
        &Patch::Apply(apply(vec!["a.example/f"])),
    )
    .await
    .unwrap();
    cms.patch(
        "shared",
        &PatchParams::apply("controller-b"),
        &Patch::Apply(apply(vec!["b.example/f"])),
    )
    .await
    .unwrap();
    let both = cms
        .get("shared")
        .await
        .unwrap()
        .metadata
        .finalizers
        .unwrap();
    assert_eq!(both.len(), 2, "{both:?}");
    // controller-a stops applying its finalizer: only its own goes.
    cms.patch(
        "shared",
        &PatchParams::apply("controller-a"),
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        cms.get("shared").await.unwrap().metadata.finalizers,
        Some(vec!["b.example/f".to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_admission_resolves_pod_priorities_from_classes() {
    let (_etcd, _server, client) = start().await;
    let classes: Api<PriorityClass> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let create_pod = |name: &str, spec_extra: Value| {
        let mut body = json!({
            "metadata": { "name": name },
            "spec": { "containers": [{ "name": "c", "image": "busybox" }] },
        });
        for (k, v) in spec_extra.as_object().cloned().unwrap_or_default() {
            body["spec"][k] = v;
        }
        let client = client.clone();
        async move {
            raw(
                &client,
                "POST",
                "/api/v1/namespaces/default/pods",
                "application/json",
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };

    // The system classes exist from startup, as upstream's bootstrap makes them.
    let node_critical = classes.get("system-node-critical").await.unwrap();
    let cluster_critical = classes.get("system-cluster-critical").await.unwrap();
    assert_eq!(
        (node_critical.value, cluster_critical.value),
        (2_000_001_000, 2_000_000_000)
    );
    assert_eq!(
        cluster_critical.description.as_deref(),
        Some(
            "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."
        )
    );
    assert_eq!(
        node_critical.preemption_policy.as_deref(),
        Some("PreemptLowerPriority")
    );
    // ... and cannot be deleted.
    let refused = classes
        .delete("system-node-critical", &Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403
            && s.message == "priorityclasses.scheduling.k8s.io \"system-node-critical\" is forbidden: this is a system priority class and cannot be deleted"),
        "{refused:?}"
    );
    assert!(
        classes
            .get_opt("system-node-critical")
            .await
            .unwrap()
            .is_some()
    );
    assert_ne!(node_critical.global_default, Some(true));

    // Without classes marked default, a pod gets priority 0.
    let plain = pods
        .create(&PostParams::default(), &pod("plain"))
        .await
        .unwrap();
    let spec = plain.spec.unwrap();
    assert_eq!(
        (spec.priority, spec.preemption_policy.as_deref()),
        (Some(0), Some("PreemptLowerPriority"))
    );
    assert_eq!(spec.priority_class_name, None);

    // A pod naming a class gets its value and preemption policy.
    classes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "high" }, "value": 1000, "preemptionPolicy": "Never",
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let (status, body) = create_pod("important", json!({ "priorityClassName": "high" })).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (&body["spec"]["priority"], &body["spec"]["preemptionPolicy"]),
        (&json!(1000), &json!("Never"))
    );
    let (status, body) = create_pod(
        "critical",
        json!({ "priorityClassName": "system-node-critical" }),
    )
    .await;
    assert_eq!(
        (status, &body["spec"]["priority"]),
        (201, &json!(2_000_001_000))
    );

    // An unknown class, or a priority the class contradicts, is refused and nothing stored.
    let (status, body) = create_pod("orphan", json!({ "priorityClassName": "missing" })).await;
    assert_eq!(
        (status, body["reason"].as_str(), body["message"].as_str()),
        (
            403,
            Some("Forbidden"),
            Some("pods \"orphan\" is forbidden: no PriorityClass with name missing was found")
        )
    );
    let (status, body) = create_pod(
        "liar",
        json!({ "priorityClassName": "high", "priority": 5 }),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (
            403,
            Some(
                "pods \"liar\" is forbidden: the integer value of priority (5) must not be provided in pod spec; priority admission controller computed 1000 from the given PriorityClass name"
            )
        )
    );
    assert!(pods.get_opt("orphan").await.unwrap().is_none());
    assert!(pods.get_opt("liar").await.unwrap().is_none());

    // An update that leaves the priority out keeps it.
    let (status, mut current) = raw(
        &client,
        "GET",
        "/api/v1/namespaces/default/pods/important",
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    let spec = current["spec"].as_object_mut().unwrap();
    spec.remove("priority");
    spec.remove("preemptionPolicy");
    current["metadata"]["labels"] = json!({ "tier": "gold" });
    let (status, body) = raw(
        &client,
        "PUT",
        "/api/v1/namespaces/default/pods/important",
        "application/json",
        serde_json::to_vec(&current).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["spec"]["priority"], &body["spec"]["preemptionPolicy"]),
        (&json!(1000), &json!("Never"))
    );

    // Class validation: user classes stay at or below 1000000000; system- names are reserved.
    let (status, body) = raw(
        &client,
        "POST",
        "/apis/scheduling.k8s.io/v1/priorityclasses",
        "application/json",
        br#"{"metadata":{"name":"too-high"},"value":1000000001}"#.to_vec(),
    )
    .await;
    assert_eq!((status, body["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(
        body["details"]["causes"][0]["message"],
        "Forbidden: maximum allowed value of a user defined priority is 1000000000"
    );

    // A default class applies to pods that name none, and there is only one default.
    classes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "fallback" }, "value": 42, "globalDefault": true,
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let defaulted = pods
        .create(&PostParams::default(), &pod("defaulted"))
        .await
        .unwrap();
    let spec = defaulted.spec.unwrap();
    assert_eq!(
        (spec.priority_class_name.as_deref(), spec.priority),
        (Some("fallback"), Some(42))
    );
    let (status, body) = raw(
        &client,
        "POST",
        "/apis/scheduling.k8s.io/v1/priorityclasses",
        "application/json",
        br#"{"metadata":{"name":"another"},"value":7,"globalDefault":true}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (
            403,
            Some(
                "priorityclasses.scheduling.k8s.io \"another\" is forbidden: PriorityClass fallback is already marked as default. Only one default can exist"
            )
        )
    );
    let names: BTreeSet<String> = classes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(
            [
                "fallback",
                "high",
                "system-cluster-critical",
                "system-node-critical"
            ]
            .map(String::from)
        )
    );
}

/// Read-modify-writes start from the watch cache's copy of the object, which may lag behind
/// etcd: concurrent writers must still lose no update, and a write naming the resourceVersion
/// just returned must never be refused as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_modify_writes_lose_no_update_and_honour_fresh_preconditions() {
    let (_etcd, _server, client) = start().await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "counter"}})).unwrap(),
    )
    .await
    .unwrap();

    // 40 writers at once, each adding its own key: every key is there at the end.
    let writers = (0..40).map(|i| {
        let maps = maps.clone();
        async move {
            maps.patch(
                "counter",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {format!("k{i}"): "1"}})),
            )
            .await
        }
    });
    for written in futures::future::join_all(writers).await {
        written.unwrap();
    }
    let data = maps.get("counter").await.unwrap().data.unwrap_or_default();
    assert_eq!(data.len(), 40, "lost updates: {:?}", data.keys());

    // Each write names the resourceVersion the previous one returned, at once.
    let mut version = maps.get("counter").await.unwrap().metadata.resource_version;
    for i in 0..30 {
        let patch = json!({"metadata": {"resourceVersion": version}, "data": {"n": i.to_string()}});
        let written = maps
            .patch("counter", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap_or_else(|e| panic!("write {i} with the current resourceVersion: {e}"));
        assert_eq!(written.data.unwrap()["n"], i.to_string());
        version = written.metadata.resource_version;
    }
    // A resourceVersion one write old is still refused.
    let stale_version = version.clone();
    maps.patch(
        "counter",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"n": "latest"}})),
    )
    .await
    .unwrap();
    let err = maps
        .patch(
            "counter",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"resourceVersion": stale_version}, "data": {"n": "x"}}),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err:?}"
    );
    assert_eq!(
        maps.get("counter").await.unwrap().data.unwrap()["n"],
        "latest"
    );
}

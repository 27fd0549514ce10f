//! Makes the cluster DNS reachable the way pods expect: the `kube-system/kube-dns` Service at
//! the cluster DNS address (upstream's convention: the tenth address of the service range),
//! with internalTrafficPolicy Local so that each node's pods use the DNS server of their own
//! node, and an EndpointSlice per node naming this server's address. The Service has no
//! selector, so the endpoint slice controller leaves the slices (managed by `baton-dns`) alone.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// The namespace and name of the Service.
pub const NAMESPACE: &str = "kube-system";
/// The Service's name (upstream's, which tools look for).
pub const SERVICE: &str = "kube-dns";
/// The field manager of the server-side applies.
const MANAGER: &str = "baton-dns";

/// Registering the DNS server failed.
#[derive(Debug, thiserror::Error)]
#[error("register {what} for the cluster DNS")]
pub struct RegisterDnsError {
    /// The object.
    pub what: String,
    /// The API's answer.
    #[source]
    pub source: kube::Error,
}

/// Applies the `kube-dns` Service (at `cluster_ip`) and this node's EndpointSlice (the server at
/// `node_ip` on `node_name`).
pub async fn register(
    client: &Client,
    cluster_ip: Ipv4Addr,
    node_name: &str,
    node_ip: Ipv4Addr,
) -> Result<(), RegisterDnsError> {
    let params = PatchParams::apply(MANAGER).force();
    let service = json!({
        "metadata": {
            "name": SERVICE,
            "namespace": NAMESPACE,
            "labels": { "k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS" },
        },
        "spec": {
            "clusterIP": cluster_ip.to_string(),
            "internalTrafficPolicy": "Local",
            "ports": [
                { "name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53 },
                { "name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53 },
            ],
        },
    });
    // Created once, by whichever node comes first, and then left as the cluster has it (an
    // administrator may have changed it).
    let services = Api::<Service>::namespaced(client.clone(), NAMESPACE);
    let service_error = |source| RegisterDnsError {
        what: format!("Service {NAMESPACE}/{SERVICE}"),
        source,
    };
    if services
        .get_opt(SERVICE)
        .await
        .map_err(service_error)?
        .is_none()
    {
        let service: Service = serde_json::from_value(service).expect("a valid Service");
        match services.create(&PostParams::default(), &service).await {
            Ok(_) => {}
            // Another node created it meanwhile (its address is then taken, or its name).
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 422 => {
                services.get(SERVICE).await.map_err(service_error)?;
            }
            Err(err) => return Err(service_error(err)),
        }
    }
    let name = format!("{SERVICE}-{node_name}");
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": SERVICE,
                "endpointslice.kubernetes.io/managed-by": MANAGER,
            },
        },
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": [node_ip.to_string()],
            "conditions": { "ready": true, "serving": true, "terminating": false },
            "nodeName": node_name,
        }],
        "ports": [
            { "name": "dns", "port": 53, "protocol": "UDP" },
            { "name": "dns-tcp", "port": 53, "protocol": "TCP" },
        ],
    });
    Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE)
        .patch(&name, &params, &Patch::Apply(&slice))
        .await
        .map_err(|source| RegisterDnsError {
            what: format!("EndpointSlice {NAMESPACE}/{name}"),
            source,
        })?;
    Ok(())
}

/// Registers, retrying with a doubling delay (1 s to 30 s) until it succeeds: the server
/// answers meanwhile, and two nodes creating the Service at once is a conflict that one of them
/// retries.
pub async fn register_until_done(
    client: Client,
    cluster_ip: Ipv4Addr,
    node_name: String,
    node_ip: Ipv4Addr,
) {
    let mut delay = Duration::from_secs(1);
    loop {
        match register(&client, cluster_ip, &node_name, node_ip).await {
            Ok(()) => {
                tracing::info!(service = %cluster_ip, node = %node_name, "registered in kube-system/kube-dns");
                return;
            }
            Err(err) => {
                tracing::warn!(err = %baton_client::error_chain(&err), ?delay, "registering the cluster DNS; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Registers, then keeps this node's EndpointSlice there: when it is deleted or changed (by
/// anyone), it is applied again. Woken by a watch of the slices this server manages.
pub async fn keep_registered(
    client: Client,
    cluster_ip: Ipv4Addr,
    node_name: String,
    node_ip: Ipv4Addr,
) {
    register_until_done(client.clone(), cluster_ip, node_name.clone(), node_ip).await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let informer = std::sync::Arc::new(baton_client::Informer::new(
        slices,
        kube::runtime::watcher::Config::default()
            .labels(&format!("endpointslice.kubernetes.io/managed-by={MANAGER}")),
    ));
    let mine = format!("{SERVICE}-{node_name}");
    let (nudge, mut nudged) = tokio::sync::watch::channel(());
    let watched = mine.clone();
    informer.on_event(move |event| {
        if event
            .objects()
            .any(|slice| slice.metadata.name.as_deref() == Some(watched.as_str()))
        {
            nudge.send_replace(());
        }
    });
    let runner = informer.clone();
    tokio::spawn(async move { runner.run().await });
    while nudged.changed().await.is_ok() {
        let current = informer
            .store()
            .get(&kube::runtime::reflector::ObjectRef::new(&mine).within(NAMESPACE));
        let serves_here = current.is_some_and(|slice| {
            slice.endpoints.iter().any(|endpoint| {
                endpoint.addresses == [node_ip.to_string()]
                    && endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(true)
            })
        });
        if !serves_here {
            tracing::info!(slice = %mine, "this node's kube-dns EndpointSlice went or changed; applying it again");
            register_until_done(client.clone(), cluster_ip, node_name.clone(), node_ip).await;
        }
    }
}

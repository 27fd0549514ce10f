//! A node's heartbeat: its Lease in kube-node-lease, owned by its Node, renewed by the kubelet
//! (and by simulated nodes) and watched by the node lifecycle controller.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// The namespace of node Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Seconds a node Lease is valid for (the kubelet's default).
pub const NODE_LEASE_DURATION_SECONDS: i32 = 40;

/// Renews the Lease of node `name`; one that is missing (a new node, or one deleted by hand or
/// collected with an earlier Node of the same name) is made, owned by the Node as it is now.
pub async fn renew_node_lease(client: &Client, name: &str) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let patch = json!({ "spec": {
        "holderIdentity": name,
        "leaseDurationSeconds": NODE_LEASE_DURATION_SECONDS,
        "renewTime": MicroTime(jiff::Timestamp::now()),
    }});
    match leases
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        other => return other.map(|_| ()),
    }
    let node = Api::<Node>::all(client.clone()).get(name).await?;
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(NODE_LEASE_NAMESPACE.into()),
            owner_references: node.metadata.uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: name.to_string(),
                    uid,
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_string()),
            lease_duration_seconds: Some(NODE_LEASE_DURATION_SECONDS),
            renew_time: Some(MicroTime(jiff::Timestamp::now())),
            ..Default::default()
        }),
    };
    match leases.create(&PostParams::default(), &lease).await {
        // Made meanwhile by another writer: it is fresh.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        other => other.map(|_| ()),
    }
}

//! persistentVolumeClaim volumes: the claim must be bound, and its PersistentVolume must be
//! bound back to it; the volume is then the PersistentVolume's directory on this node. Baton's
//! kubelet mounts the node-local kinds of volume: `hostPath` (checked, or created, by its type,
//! as a pod's hostPath volume) and `local` (a directory or mount that must already exist).

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaimVolumeSource};

use super::host_path;
use super::objects::ObjectSource;

/// A claim's volume could not be found or set up; the texts follow upstream's kubelet.
#[derive(Debug, thiserror::Error)]
pub enum ClaimVolumeError {
    #[error("error processing PVC {namespace}/{claim}: {reason}")]
    Claim {
        namespace: String,
        claim: String,
        reason: String,
    },
    #[error(
        "the volume of PersistentVolume {0:?} is not one Baton's kubelet mounts (hostPath and local are)"
    )]
    UnsupportedSource(String),
    #[error("path {path:?} of local PersistentVolume {volume:?} does not exist on this node")]
    LocalPathMissing { volume: String, path: String },
    #[error(transparent)]
    HostPath(#[from] host_path::HostPathError),
    #[error("making {} writable", path.display())]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The host directory of a claim's volume.
pub async fn set_up(
    objects: &impl ObjectSource,
    namespace: &str,
    source: &PersistentVolumeClaimVolumeSource,
) -> Result<PathBuf, ClaimVolumeError> {
    let claim_error = |reason: String| ClaimVolumeError::Claim {
        namespace: namespace.to_string(),
        claim: source.claim_name.clone(),
        reason,
    };
    let claim = objects
        .persistent_volume_claim(&source.claim_name)
        .await
        .map_err(&claim_error)?
        .ok_or_else(|| {
            claim_error(format!(
                "persistentvolumeclaim {:?} not found",
                source.claim_name
            ))
        })?;
    if claim.metadata.deletion_timestamp.is_some() {
        return Err(claim_error("PVC is being deleted".into()));
    }
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let volume_name = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty());
    let (true, Some(volume_name)) = (bound, volume_name) else {
        return Err(claim_error("PVC is not bound".into()));
    };
    let volume = objects
        .persistent_volume(&volume_name)
        .await
        .map_err(&claim_error)?
        .ok_or_else(|| {
            claim_error(format!(
                "failed to fetch PV {volume_name} from API server: persistentvolumes {volume_name:?} not found"
            ))
        })?;
    let claim_ref_uid = volume
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .and_then(|r| r.uid.clone());
    if claim_ref_uid.is_none() || claim_ref_uid != claim.metadata.uid {
        return Err(claim_error(format!(
            "found PV object {volume_name} but it has invalid ClaimRef"
        )));
    }
    volume_path(&volume)
}

/// The provisioner whose volumes are made world-writable on first use.
const LOCAL_PATH_PROVISIONER: &str = "baton.dev/local-path";

/// The directory a PersistentVolume stands for on this node.
fn volume_path(volume: &PersistentVolume) -> Result<PathBuf, ClaimVolumeError> {
    let name = volume.metadata.name.clone().unwrap_or_default();
    let spec = volume.spec.as_ref();
    if let Some(host_path) = spec.and_then(|s| s.host_path.as_ref()) {
        let provisioned = volume
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("pv.kubernetes.io/provisioned-by"))
            .is_some_and(|p| p == LOCAL_PATH_PROVISIONER);
        let path = PathBuf::from(&host_path.path);
        let new = !path.exists();
        let dir = host_path::set_up(host_path)?;
        // As local-path-provisioner makes its directories: writable by any user the pod
        // runs as.
        if provisioned && new {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(
                |source| ClaimVolumeError::Permissions {
                    path: dir.clone(),
                    source,
                },
            )?;
        }
        return Ok(dir);
    }
    if let Some(local) = spec.and_then(|s| s.local.as_ref()) {
        let path = PathBuf::from(&local.path);
        if !path.exists() {
            return Err(ClaimVolumeError::LocalPathMissing {
                volume: name,
                path: local.path.clone(),
            });
        }
        return Ok(path);
    }
    Err(ClaimVolumeError::UnsupportedSource(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::objects::fake::FakeObjects;
    use k8s_openapi::api::core::v1::{
        HostPathVolumeSource, LocalVolumeSource, ObjectReference, PersistentVolumeClaim,
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeSpec,
    };

    fn claim(volume: Option<&str>, phase: &str) -> PersistentVolumeClaim {
        let mut claim = PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec {
                volume_name: volume.map(str::to_string),
                ..Default::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        claim.metadata.uid = Some("claim-uid".into());
        claim
    }

    fn volume(spec: PersistentVolumeSpec, claim_uid: &str) -> PersistentVolume {
        let mut volume = PersistentVolume {
            spec: Some(PersistentVolumeSpec {
                claim_ref: Some(ObjectReference {
                    uid: Some(claim_uid.into()),
                    ..Default::default()
                }),
                ..spec
            }),
            ..Default::default()
        };
        volume.metadata.name = Some("pv-1".into());
        volume
    }

    fn source() -> PersistentVolumeClaimVolumeSource {
        PersistentVolumeClaimVolumeSource {
            claim_name: "data".into(),
            read_only: None,
        }
    }

    #[tokio::test]
    async fn a_bound_claim_mounts_its_volume_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pv-1");
        let mut objects = FakeObjects::default();
        objects
            .claims
            .insert("data".into(), claim(Some("pv-1"), "Bound"));
        let host_path = PersistentVolumeSpec {
            host_path: Some(HostPathVolumeSource {
                path: path.display().to_string(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Default::default()
        };
        objects
            .volumes
            .insert("pv-1".into(), volume(host_path, "claim-uid"));
        assert_eq!(set_up(&objects, "team", &source()).await.unwrap(), path);
        assert!(path.is_dir());
        // A provisioned volume's new directory is writable by anyone.
        let provisioned = dir.path().join("pvc-2");
        let mut volume = objects.volumes["pv-1"].clone();
        volume
            .spec
            .as_mut()
            .unwrap()
            .host_path
            .as_mut()
            .unwrap()
            .path = provisioned.display().to_string();
        volume.metadata.annotations = Some(
            [(
                "pv.kubernetes.io/provisioned-by".to_string(),
                LOCAL_PATH_PROVISIONER.to_string(),
            )]
            .into(),
        );
        objects.volumes.insert("pv-1".into(), volume);
        set_up(&objects, "team", &source()).await.unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&provisioned)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o777);
    }

    #[tokio::test]
    async fn unbound_missing_and_mismatched_claims_are_refused() {
        let mut objects = FakeObjects::default();
        let err = set_up(&objects, "team", &source()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "error processing PVC team/data: persistentvolumeclaim \"data\" not found"
        );
        objects.claims.insert("data".into(), claim(None, "Pending"));
        let err = set_up(&objects, "team", &source()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "error processing PVC team/data: PVC is not bound"
        );
        objects
            .claims
            .insert("data".into(), claim(Some("pv-1"), "Bound"));
        let local = PersistentVolumeSpec {
            local: Some(LocalVolumeSource {
                path: "/nonexistent/baton-test".into(),
                fs_type: None,
            }),
            ..Default::default()
        };
        objects
            .volumes
            .insert("pv-1".into(), volume(local.clone(), "someone-else"));
        let err = set_up(&objects, "team", &source()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "error processing PVC team/data: found PV object pv-1 but it has invalid ClaimRef"
        );
        objects
            .volumes
            .insert("pv-1".into(), volume(local, "claim-uid"));
        let err = set_up(&objects, "team", &source()).await.unwrap_err();
        assert!(
            err.to_string().contains("does not exist on this node"),
            "{err}"
        );
    }
}

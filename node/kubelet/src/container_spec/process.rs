//! The container's process: its arguments (command/args over the image's Entrypoint/Cmd, with
//! `$(VAR)` expansion), environment, working directory and user.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use oci_spec::runtime::User;

use super::security::EffectiveSecurityContext;
use super::user::UserDb;
use super::{ContainerConfigError, ImageDefaults, pod_description};
use crate::env::expand;

/// `PATH` when neither the image nor the pod sets one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process arguments, as Kubernetes documents them: `command` replaces the image's
/// Entrypoint (and then its Cmd is ignored), `args` replaces the image's Cmd. `$(VAR)` in
/// `command` and `args` expands from the container's environment; the image's values are used
/// as written.
pub fn args(
    container: &Container,
    image: &ImageDefaults,
    env: &[(String, String)],
) -> Result<Vec<String>, ContainerConfigError> {
    let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expand_all = |items: &[String]| -> Vec<String> {
        items
            .iter()
            .map(|item| expand(item, |name| vars.get(name).map(|v| v.to_string())))
            .collect()
    };
    let command = expand_all(container.command.as_deref().unwrap_or_default());
    let args = expand_all(container.args.as_deref().unwrap_or_default());
    let mut argv = if command.is_empty() {
        // An Entrypoint of [""] means "no entrypoint" (Docker's way of clearing it).
        let entrypoint = if image.entrypoint.len() == 1 && image.entrypoint[0].is_empty() {
            Vec::new()
        } else {
            image.entrypoint.clone()
        };
        let rest = if args.is_empty() {
            image.cmd.clone()
        } else {
            args
        };
        [entrypoint, rest].concat()
    } else {
        [command, args].concat()
    };
    if argv.is_empty() {
        return Err(ContainerConfigError::NoCommand);
    }
    argv.shrink_to_fit();
    Ok(argv)
}

/// Sets or replaces `KEY=VALUE` entries in order; an entry without `=` removes its key.
fn merge_env(base: &mut Vec<String>, overrides: impl IntoIterator<Item = String>) {
    for entry in overrides {
        let key = entry.split_once('=').map(|(k, _)| k.to_string());
        match key {
            Some(key) => {
                let prefix = format!("{key}=");
                match base.iter_mut().find(|e| e.starts_with(&prefix)) {
                    Some(existing) => *existing = entry,
                    None => base.push(entry),
                }
            }
            None => {
                let prefix = format!("{entry}=");
                base.retain(|e| !e.starts_with(&prefix));
            }
        }
    }
}

/// The process environment as containerd composes it: the default `PATH`, `TERM=xterm` with a
/// TTY, `HOSTNAME`, then the image's variables, then the container's (later ones replace
/// earlier ones with the same name).
pub fn environment(
    image: &ImageDefaults,
    env: &[(String, String)],
    hostname: &str,
    tty: bool,
) -> Vec<String> {
    let mut out = vec![DEFAULT_PATH.to_string()];
    if tty {
        out.push("TERM=xterm".to_string());
    }
    merge_env(&mut out, [format!("HOSTNAME={hostname}")]);
    merge_env(&mut out, image.env.iter().cloned());
    merge_env(&mut out, env.iter().map(|(k, v)| format!("{k}={v}")));
    out
}

/// `workingDir` of the container, else the image's `WorkingDir`, else `/`.
pub fn working_dir(container: &Container, image: &ImageDefaults) -> PathBuf {
    container
        .working_dir
        .as_deref()
        .filter(|d| !d.is_empty())
        .or(image.working_dir.as_deref().filter(|d| !d.is_empty()))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The user and group parts of the image's `User` (`None` for an empty part).
fn image_user(image: &ImageDefaults) -> (Option<&str>, Option<&str>) {
    let Some(user) = image.user.as_deref().filter(|u| !u.is_empty()) else {
        return (None, None);
    };
    match user.split_once(':') {
        Some((u, g)) => (
            Some(u).filter(|u| !u.is_empty()),
            Some(g).filter(|g| !g.is_empty()),
        ),
        None => (Some(user), None),
    }
}

/// Upstream `verifyRunAsNonRoot`: with `runAsNonRoot`, refuse uid 0 from `runAsUser` or the
/// image (an image without a user runs as root), and an image user given by name (it cannot be
/// checked without trusting the image's passwd file).
pub fn verify_run_as_non_root(
    pod: &Pod,
    container: &Container,
    sc: &EffectiveSecurityContext,
    image: &ImageDefaults,
) -> Result<(), ContainerConfigError> {
    if !sc.run_as_non_root {
        return Ok(());
    }
    let describe = || (pod_description(pod), container.name.clone());
    if let Some(uid) = sc.run_as_user {
        if uid == 0 {
            let (pod, container) = describe();
            return Err(ContainerConfigError::RunAsUserRoot { pod, container });
        }
        return Ok(());
    }
    match image_user(image).0 {
        None => {
            let (pod, container) = describe();
            Err(ContainerConfigError::RunsAsRoot { pod, container })
        }
        Some(user) => match user.parse::<i64>() {
            Ok(0) => {
                let (pod, container) = describe();
                Err(ContainerConfigError::RunsAsRoot { pod, container })
            }
            Ok(_) => Ok(()),
            Err(_) => {
                let (pod, container) = describe();
                Err(ContainerConfigError::NonNumericUser {
                    user: user.to_string(),
                    pod,
                    container,
                })
            }
        },
    }
}

/// The process's uid, gid and additional gids. The user is `runAsUser` (container over pod),
/// else the image's user, else root; the group is `runAsGroup`, else the image's group (when
/// the user also comes from the image), else the user's primary group from the image's
/// passwd file, else 0. Additional gids: the primary gid, the image groups that list the user,
/// `fsGroup` and `supplementalGroups`, sorted and deduplicated (containerd's order-free set).
pub fn resolve_user(
    pod: &Pod,
    sc: &EffectiveSecurityContext,
    image: &ImageDefaults,
    rootfs: &Path,
) -> Result<User, ContainerConfigError> {
    let (image_user, image_group) = image_user(image);
    let (user_part, group_part) = match sc.run_as_user {
        Some(uid) => (uid.to_string(), sc.run_as_group.map(|g| g.to_string())),
        None => (
            image_user.unwrap_or("0").to_string(),
            sc.run_as_group
                .map(|g| g.to_string())
                .or_else(|| image_group.map(str::to_string)),
        ),
    };
    let db = UserDb::load(rootfs)?;
    let spec = match &group_part {
        Some(group) => format!("{user_part}:{group}"),
        None => user_part.clone(),
    };
    let identity = db.resolve(&spec)?;
    let mut gids: BTreeSet<u32> = BTreeSet::from([identity.gid]);
    gids.extend(db.member_groups(&user_part));
    gids.extend(sc.fs_group.and_then(|g| u32::try_from(g).ok()));
    gids.extend(
        sc.supplemental_groups
            .iter()
            .filter_map(|g| u32::try_from(*g).ok()),
    );
    tracing::trace!(
        pod = %pod_description(pod),
        uid = identity.uid,
        gid = identity.gid,
        "resolved container user"
    );
    let mut user = User::default();
    user.set_uid(identity.uid);
    user.set_gid(identity.gid);
    user.set_additional_gids(Some(gids.into_iter().collect()));
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageDefaults {
        ImageDefaults {
            entrypoint: strings(entrypoint),
            cmd: strings(cmd),
            ..Default::default()
        }
    }

    fn container(command: Option<&[&str]>, args: Option<&[&str]>) -> Container {
        Container {
            name: "app".into(),
            command: command.map(strings),
            args: args.map(strings),
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_combine_as_kubernetes_documents() {
        let img = image(&["/ep"], &["cmd-arg"]);
        type Case<'a> = (Option<&'a [&'a str]>, Option<&'a [&'a str]>, &'a [&'a str]);
        let cases: Vec<Case> = vec![
            // Neither: the image's Entrypoint and Cmd.
            (None, None, &["/ep", "cmd-arg"]),
            // Command only: the image's Entrypoint and Cmd are ignored.
            (Some(&["/bin/sh"]), None, &["/bin/sh"]),
            // Args only: the image's Entrypoint with the new args.
            (None, Some(&["x", "y"]), &["/ep", "x", "y"]),
            // Both: command and args, the image's ignored.
            (
                Some(&["/bin/sh"]),
                Some(&["-c", "true"]),
                &["/bin/sh", "-c", "true"],
            ),
            // Empty lists count as unset.
            (Some(&[]), Some(&[]), &["/ep", "cmd-arg"]),
        ];
        for (command, args_, want) in cases {
            assert_eq!(
                args(&container(command, args_), &img, &[]).unwrap(),
                strings(want),
                "command {command:?} args {args_:?}"
            );
        }
        // An Entrypoint of [""] is cleared.
        assert_eq!(
            args(&container(None, None), &image(&[""], &["sh"]), &[]).unwrap(),
            strings(&["sh"])
        );
        assert_eq!(
            args(&container(None, None), &image(&[], &[]), &[])
                .unwrap_err()
                .to_string(),
            "no command specified"
        );
    }

    #[test]
    fn command_and_args_expand_container_variables() {
        let env = vec![
            ("GREETING".to_string(), "hello".to_string()),
            ("WHO".to_string(), "world".to_string()),
        ];
        let c = container(
            Some(&["echo", "$(GREETING)"]),
            Some(&["$(WHO)", "$$(WHO)", "$(NOPE)"]),
        );
        assert_eq!(
            args(&c, &ImageDefaults::default(), &env).unwrap(),
            strings(&["echo", "hello", "world", "$(WHO)", "$(NOPE)"])
        );
        // The image's Cmd is not expanded.
        let img = image(&[], &["$(WHO)"]);
        assert_eq!(
            args(&container(None, None), &img, &env).unwrap(),
            strings(&["$(WHO)"])
        );
    }

    #[test]
    fn environment_layers() {
        let img = ImageDefaults {
            env: strings(&[
                "PATH=/image/bin",
                "LANG=C",
                "UNSET_ME=1",
                "UNSET_ME",
                "KEEP=image",
            ]),
            ..Default::default()
        };
        let env = vec![
            ("LANG".to_string(), "en_US.UTF-8".to_string()),
            ("EXTRA".to_string(), "a=b".to_string()),
        ];
        assert_eq!(
            environment(&img, &env, "web-0", false),
            strings(&[
                "PATH=/image/bin",
                "HOSTNAME=web-0",
                "LANG=en_US.UTF-8",
                "KEEP=image",
                "EXTRA=a=b",
            ])
        );
        assert_eq!(
            environment(&ImageDefaults::default(), &[], "h", true),
            strings(&[DEFAULT_PATH, "TERM=xterm", "HOSTNAME=h"])
        );
        let override_hostname = vec![("HOSTNAME".to_string(), "custom".to_string())];
        assert_eq!(
            environment(&ImageDefaults::default(), &override_hostname, "h", false),
            strings(&[DEFAULT_PATH, "HOSTNAME=custom"])
        );
    }

    #[test]
    fn working_dir_precedence() {
        let img = ImageDefaults {
            working_dir: Some("/srv".into()),
            ..Default::default()
        };
        let mut c = container(None, None);
        assert_eq!(
            working_dir(&c, &ImageDefaults::default()),
            PathBuf::from("/")
        );
        assert_eq!(working_dir(&c, &img), PathBuf::from("/srv"));
        c.working_dir = Some("/work".into());
        assert_eq!(working_dir(&c, &img), PathBuf::from("/work"));
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("prod".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn run_as_non_root_checks() {
        let non_root = |run_as_user: Option<i64>| EffectiveSecurityContext {
            run_as_non_root: true,
            run_as_user,
            ..Default::default()
        };
        let with_user = |user: Option<&str>| ImageDefaults {
            user: user.map(str::to_string),
            ..Default::default()
        };
        let c = container(None, None);
        let check = |sc: &EffectiveSecurityContext, img: &ImageDefaults| {
            verify_run_as_non_root(&pod(), &c, sc, img).map_err(|e| e.to_string())
        };
        let root = "container has runAsNonRoot and image will run as root (pod: \"web_prod(u-1)\", container: app)";
        assert_eq!(
            check(&non_root(None), &with_user(None)),
            Err(root.to_string())
        );
        assert_eq!(
            check(&non_root(None), &with_user(Some("0"))),
            Err(root.to_string())
        );
        assert_eq!(
            check(&non_root(None), &with_user(Some("0:1000"))),
            Err(root.to_string())
        );
        assert_eq!(check(&non_root(None), &with_user(Some("1000"))), Ok(()));
        assert_eq!(check(&non_root(None), &with_user(Some("1000:0"))), Ok(()));
        assert_eq!(
            check(&non_root(None), &with_user(Some("nginx:nginx"))),
            Err("container has runAsNonRoot and image has non-numeric user (nginx), cannot verify user is non-root (pod: \"web_prod(u-1)\", container: app)".to_string())
        );
        assert_eq!(
            check(&non_root(Some(1000)), &with_user(Some("nginx"))),
            Ok(())
        );
        assert_eq!(
            check(&non_root(Some(0)), &with_user(Some("1000"))),
            Err("container's runAsUser breaks non-root policy (pod: \"web_prod(u-1)\", container: app)".to_string())
        );
        let relaxed = EffectiveSecurityContext::default();
        assert_eq!(check(&relaxed, &with_user(None)), Ok(()));
        assert_eq!(
            ContainerConfigError::RunsAsRoot {
                pod: String::new(),
                container: String::new()
            }
            .reason(),
            "CreateContainerConfigError"
        );
    }

    fn rootfs() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/sh\napp:x:1000:1001::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("etc/group"),
            "root:x:0:\nwww-data:x:33:\nstaff:x:50:app\napp:x:1001:app\n",
        )
        .unwrap();
        root
    }

    #[test]
    fn users_resolve_from_the_security_context_and_the_image() {
        let root = rootfs();
        let ids = |sc: EffectiveSecurityContext, user: Option<&str>| {
            let img = ImageDefaults {
                user: user.map(str::to_string),
                ..Default::default()
            };
            resolve_user(&pod(), &sc, &img, root.path()).map(|u| {
                (
                    u.uid(),
                    u.gid(),
                    u.additional_gids().clone().unwrap_or_default(),
                )
            })
        };
        let sc = |user: Option<i64>, group: Option<i64>| EffectiveSecurityContext {
            run_as_user: user,
            run_as_group: group,
            ..Default::default()
        };
        // No user anywhere: root.
        assert_eq!(ids(sc(None, None), None).unwrap(), (0, 0, vec![0]));
        // Image users in each form.
        assert_eq!(ids(sc(None, None), Some("33")).unwrap(), (33, 33, vec![33]));
        assert_eq!(
            ids(sc(None, None), Some("app")).unwrap(),
            (1000, 1001, vec![50, 1001])
        );
        assert_eq!(
            ids(sc(None, None), Some("1000:50")).unwrap(),
            (1000, 50, vec![50])
        );
        assert_eq!(
            ids(sc(None, None), Some("app:www-data")).unwrap(),
            (1000, 33, vec![33, 50])
        );
        assert_eq!(
            ids(sc(None, None), Some("5000")).unwrap(),
            (5000, 0, vec![0])
        );
        // runAsUser wins over the image, runAsGroup over everything.
        assert_eq!(
            ids(sc(Some(1000), None), Some("33")).unwrap(),
            (1000, 1001, vec![50, 1001])
        );
        assert_eq!(
            ids(sc(Some(7), Some(8)), Some("app")).unwrap(),
            (7, 8, vec![8])
        );
        assert_eq!(
            ids(sc(None, Some(8)), Some("app:staff")).unwrap(),
            (1000, 8, vec![8, 50])
        );
        assert_eq!(ids(sc(None, Some(8)), None).unwrap(), (0, 8, vec![8]));
        // fsGroup and supplementalGroups join the additional gids.
        let mut groups = sc(Some(1000), None);
        groups.fs_group = Some(2000);
        groups.supplemental_groups = vec![3000, 50];
        assert_eq!(
            ids(groups, None).unwrap(),
            (1000, 1001, vec![50, 1001, 2000, 3000])
        );
        // Names that do not exist.
        assert_eq!(
            ids(sc(None, None), Some("ghost")).unwrap_err().to_string(),
            "unable to find user ghost: no matching entries in passwd file"
        );
        assert_eq!(
            ids(sc(None, None), Some("app:ghosts"))
                .unwrap_err()
                .reason(),
            "CreateContainerError"
        );
    }
}

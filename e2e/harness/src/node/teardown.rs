//! Stopping the real node and checking that it left nothing behind: processes, pods,
//! mounts, network namespaces, links, routes, nftables tables, cgroups, CNI cache entries
//! and the host-wide kernel settings kubelet changes at start.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::{
    mount::{MntFlags, umount2},
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::RealNode;
use crate::process;

/// The host-wide settings kubelet sets when it starts (`protectKernelDefaults: false`);
/// saved before the first node starts and put back when the last one stops.
const KERNEL_TUNABLES: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];
const RUN_ROOT: &str = "/run/pixel-playground";
/// libcni's result cache: containerd does not let the CNI cache be moved.
const CNI_RESULTS: &str = "/var/lib/cni/results";

fn saved_sysctls() -> PathBuf {
    Path::new(RUN_ROOT).join("host-sysctls")
}

/// Records the kernel tunables, unless an earlier node already did (its values are the
/// machine's own; the current ones may be kubelet's).
pub fn save_host_sysctls() -> Result<()> {
    let path = saved_sysctls();
    if path.exists() {
        return Ok(());
    }
    fs::create_dir_all(RUN_ROOT)?;
    let mut saved = String::new();
    for key in KERNEL_TUNABLES {
        let value = fs::read_to_string(Path::new("/proc/sys").join(key))
            .with_context(|| format!("cannot read /proc/sys/{key}"))?;
        saved.push_str(&format!("{key}={}\n", value.trim()));
    }
    fs::write(path, saved)?;
    Ok(())
}

/// Puts the tunables back when no other node runs, and forgets them.
fn restore_host_sysctls(node: &RealNode) -> Result<()> {
    let others = fs::read_dir(RUN_ROOT)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir() && e.path() != node.layout.run_dir)
                .count()
        })
        .unwrap_or(0);
    let path = saved_sysctls();
    if others > 0 || !path.exists() {
        return Ok(());
    }
    for line in fs::read_to_string(&path)?.lines() {
        if let Some((key, value)) = line.split_once('=') {
            fs::write(Path::new("/proc/sys").join(key), value)
                .with_context(|| format!("cannot restore /proc/sys/{key}"))?;
        }
    }
    fs::remove_file(path)?;
    Ok(())
}

/// The cgroup v1 hierarchies kubelet uses (every mounted controller but the v2 one).
pub fn cgroup_hierarchies() -> Result<Vec<PathBuf>> {
    Ok(mounted_hierarchies()?
        .into_iter()
        .filter(|path| !path.ends_with("unified"))
        .collect())
}

/// Every mounted hierarchy, the hybrid host's v2 `unified` one included: runc mirrors each
/// container's cgroup there too.
fn mounted_hierarchies() -> Result<Vec<PathBuf>> {
    let mut hierarchies = Vec::new();
    for entry in fs::read_dir("/sys/fs/cgroup").context("cannot list /sys/fs/cgroup")? {
        let path = entry?.path();
        if path.join("cgroup.procs").exists() && !path.is_symlink() {
            hierarchies.push(path);
        }
    }
    hierarchies.sort();
    Ok(hierarchies)
}

fn cgroup_dirs(node: &RealNode) -> Vec<PathBuf> {
    let root = node.layout.cgroup_root();
    mounted_hierarchies()
        .unwrap_or_default()
        .into_iter()
        .map(|h| h.join(root.trim_start_matches('/')))
        .filter(|dir| dir.exists())
        .collect()
}

/// Every directory under `dir`, deepest first.
fn subdirs_deepest_first(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < found.len() {
        if let Ok(entries) = fs::read_dir(&found[i]) {
            for entry in entries.filter_map(|e| e.ok()) {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    found.push(entry.path());
                }
            }
        }
        i += 1;
    }
    found.reverse();
    found
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The node's processes: those in its network namespace (containerd, kubelet and the rest,
/// containerd's shims), those whose command line names its directories, and every task in
/// its cgroups (the pods).
fn node_pids(node: &RealNode) -> BTreeSet<i32> {
    let mut pids = BTreeSet::new();
    let netns_inode = fs::metadata(node.layout.netns_path()).ok().map(|m| m.ino());
    let dirs = [
        node.layout.node_dir.to_string_lossy().into_owned(),
        node.layout.run_dir.to_string_lossy().into_owned(),
    ];
    let own = std::process::id() as i32;
    for pid in all_pids() {
        if pid == own {
            continue;
        }
        let in_netns = netns_inode.is_some_and(|inode| {
            fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == inode)
        });
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .unwrap_or_default();
        if in_netns || dirs.iter().any(|dir| cmdline.contains(dir.as_str())) {
            pids.insert(pid);
        }
    }
    for dir in cgroup_dirs(node) {
        for sub in subdirs_deepest_first(&dir) {
            if let Ok(tasks) = fs::read_to_string(sub.join("cgroup.procs")) {
                pids.extend(tasks.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
    }
    pids
}

fn signal_all(pids: &BTreeSet<i32>, signal: Signal) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

fn alive(pids: &BTreeSet<i32>) -> BTreeSet<i32> {
    pids.iter()
        .copied()
        .filter(|pid| {
            // A zombie has exited; its parent (possibly not us) reaps it.
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        })
        .collect()
}

fn stop_processes(node: &RealNode) -> Result<()> {
    let started = Instant::now();
    let mut pids = node_pids(node);
    signal_all(&pids, Signal::SIGTERM);
    // kubelet and containerd stop within seconds; pods get no grace: the node is going.
    while !alive(&pids).is_empty() && started.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..50 {
        pids = alive(&node_pids(node));
        if pids.is_empty() {
            return Ok(());
        }
        signal_all(&pids, Signal::SIGKILL);
        thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("processes of the real node survived SIGKILL: {pids:?}")
}

/// Mount points under the node's directories (and its network namespace's bind mount),
/// deepest first.
fn node_mounts(node: &RealNode) -> Vec<PathBuf> {
    let prefixes = [
        node.layout.node_dir.clone(),
        node.layout.run_dir.clone(),
        node.layout.netns_path(),
    ];
    let mut mounts: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| prefixes.iter().any(|prefix| point.starts_with(prefix)))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    mounts
}

fn unmount_all(node: &RealNode) -> Result<()> {
    for _ in 0..5 {
        let mounts = node_mounts(node);
        if mounts.is_empty() {
            return Ok(());
        }
        for mount in mounts {
            let _ = umount2(&mount, MntFlags::MNT_DETACH);
        }
    }
    let left = node_mounts(node);
    anyhow::ensure!(left.is_empty(), "cannot unmount {left:?}");
    Ok(())
}

/// Pod sandbox ids, whose CNI results libcni caches under /var/lib/cni.
fn sandbox_ids(node: &RealNode) -> Vec<String> {
    let dir = node
        .layout
        .run_dir
        .join("containerd/io.containerd.grpc.v1.cri/sandboxes");
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// CNI result files of this node's network, or of its pods' loopback.
fn cni_results(node: &RealNode, sandboxes: &[String]) -> Vec<PathBuf> {
    let network = format!("{}-", node.layout.cni_network_name());
    fs::read_dir(CNI_RESULTS)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|path| {
                    let name = path.file_name().unwrap_or_default().to_string_lossy();
                    name.starts_with(&network)
                        || (name.starts_with("cni-loopback-")
                            && sandboxes.iter().any(|id| name.contains(id.as_str())))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn quiet(cmd: &mut Command) {
    let _ = process::output_unchecked(cmd, Duration::from_secs(30));
}

pub fn stop(node: &RealNode) -> Result<()> {
    let layout = &node.layout;
    let sandboxes = sandbox_ids(node);
    stop_processes(node)?;
    unmount_all(node)?;
    for dir in cgroup_dirs(node) {
        for sub in subdirs_deepest_first(&dir) {
            fs::remove_dir(&sub)
                .with_context(|| format!("cannot remove cgroup {}", sub.display()))?;
        }
    }
    if layout.netns_path().exists() {
        quiet(Command::new("ip").args(["netns", "delete", layout.netns()]));
    }
    // Deleting the namespace deletes the link's other end, and so the link and its route.
    if Path::new("/sys/class/net").join(node.host_veth()).exists() {
        quiet(Command::new("ip").args(["link", "delete", &node.host_veth()]));
    }
    quiet(Command::new("nft").args(["delete", "table", "ip", &node.nft_table()]));
    for result in cni_results(node, &sandboxes) {
        let _ = fs::remove_file(result);
    }
    for dir in [CNI_RESULTS, "/var/lib/cni"] {
        // Only when empty: another runtime on this machine may use them.
        let _ = fs::remove_dir(dir);
    }
    if layout.run_dir.exists() {
        fs::remove_dir_all(&layout.run_dir)
            .with_context(|| format!("cannot remove {}", layout.run_dir.display()))?;
    }
    restore_host_sysctls(node)?;
    let _ = fs::remove_dir(RUN_ROOT);
    if layout.node_dir.exists() {
        fs::remove_dir_all(&layout.node_dir)
            .with_context(|| format!("cannot remove {}", layout.node_dir.display()))?;
    }
    let left = leftovers(node);
    anyhow::ensure!(
        left.is_empty(),
        "the real node left behind:\n  {}",
        left.join("\n  ")
    );
    Ok(())
}

pub fn leftovers(node: &RealNode) -> Vec<String> {
    let layout = &node.layout;
    let mut left = Vec::new();
    for pid in alive(&node_pids(node)) {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        left.push(format!("process {pid} ({})", comm.trim()));
    }
    for mount in node_mounts(node) {
        left.push(format!("mount {}", mount.display()));
    }
    if layout.netns_path().exists() {
        left.push(format!("network namespace {}", layout.netns()));
    }
    if Path::new("/sys/class/net").join(node.host_veth()).exists() {
        left.push(format!("link {}", node.host_veth()));
    }
    let routes = process::output(
        Command::new("ip").args(["route", "show", &node.plan.real_pods()]),
        Duration::from_secs(30),
    )
    .unwrap_or_default();
    if !routes.trim().is_empty() {
        left.push(format!("route {}", routes.trim()));
    }
    let table = process::output_unchecked(
        Command::new("nft").args(["list", "table", "ip", &node.nft_table()]),
        Duration::from_secs(30),
    );
    if table.is_ok_and(|out| out.status.success()) {
        left.push(format!("nftables table ip {}", node.nft_table()));
    }
    for dir in cgroup_dirs(node) {
        left.push(format!("cgroup {}", dir.display()));
    }
    for result in cni_results(node, &sandbox_ids(node)) {
        left.push(format!("CNI result {}", result.display()));
    }
    for dir in [&layout.run_dir, &layout.node_dir] {
        if dir.exists() {
            left.push(format!("directory {}", dir.display()));
        }
    }
    left
}

/// The host-wide kernel settings, to compare before a node starts and after it stops.
pub fn host_sysctls() -> Vec<(String, String)> {
    KERNEL_TUNABLES
        .iter()
        .map(|key| {
            let value = fs::read_to_string(Path::new("/proc/sys").join(key)).unwrap_or_default();
            ((*key).to_owned(), value.trim().to_owned())
        })
        .collect()
}

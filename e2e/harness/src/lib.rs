//! The cluster tooling `cargo xtask` and the benchmarks (`pixel-bench`) share: where things
//! live, running programs, the pinned Go toolchain, local clusters, operator processes, a
//! canvas's children, the Debian packages the runs need, container images, the previous
//! release's build, and the real node and Ingress controller of the local clusters. A
//! library only: the commands built on it live in xtask and pixel-bench.

pub mod children;
pub mod cluster;
pub mod deps;
pub mod images;
pub mod ingress;
pub mod node;
pub mod object_store;
pub mod operator;
pub mod paths;
pub mod previous_release;
pub mod process;
pub mod redis;
pub mod toolchain;

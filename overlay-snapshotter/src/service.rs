//! The gRPC side: [`Service`] implements the `containerd-snapshots` crate's `Snapshotter`
//! trait (containerd's `snapshots.v1.Snapshots` service) over a [`Snapshotter`], each call on
//! a blocking thread (the store and the filesystem work are synchronous), and [`serve`]
//! answers on a Unix socket until a shutdown signal.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use containerd_snapshots::api::types::Mount as ApiMount;
use containerd_snapshots::{Info as ApiInfo, Kind as ApiKind, Usage as ApiUsage};

use crate::error::{Error, Result};
use crate::mounts::Mount;
use crate::snapshotter::{Info, Snapshotter};
use crate::store::Kind;

/// The gRPC service over a snapshotter.
#[derive(Debug, Clone)]
pub struct Service {
    inner: Arc<Snapshotter>,
}

impl Service {
    /// Serve `snapshotter`.
    pub fn new(snapshotter: Snapshotter) -> Service {
        Service {
            inner: Arc::new(snapshotter),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Snapshotter) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let s = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| Error::Internal(format!("the request's worker failed: {e}")))?
    }
}

fn api_info(i: Info) -> ApiInfo {
    ApiInfo {
        kind: match i.record.kind {
            Kind::View => ApiKind::View,
            Kind::Active => ApiKind::Active,
            Kind::Committed => ApiKind::Committed,
        },
        name: i.name,
        parent: i.record.parent,
        labels: i.record.labels.into_iter().collect(),
        created_at: i.record.created.system_time(),
        updated_at: i.record.updated.system_time(),
    }
}

fn api_mounts(v: Vec<Mount>) -> Vec<ApiMount> {
    v.into_iter()
        .map(|m| ApiMount {
            r#type: m.fstype,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn labels(l: HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

#[tonic::async_trait]
impl containerd_snapshots::Snapshotter for Service {
    type Error = Error;

    async fn stat(&self, key: String) -> Result<ApiInfo> {
        self.run(move |s| s.stat(&key)).await.map(api_info)
    }

    async fn update(&self, info: ApiInfo, fieldpaths: Option<Vec<String>>) -> Result<ApiInfo> {
        let paths = fieldpaths.unwrap_or_default();
        self.run(move |s| s.update(&info.name, labels(info.labels), &paths))
            .await
            .map(api_info)
    }

    async fn usage(&self, key: String) -> Result<ApiUsage> {
        let u = self.run(move |s| s.usage(&key)).await?;
        Ok(ApiUsage {
            inodes: u.inodes,
            size: u.size,
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<ApiMount>> {
        self.run(move |s| s.mounts(&key)).await.map(api_mounts)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        l: HashMap<String, String>,
    ) -> Result<Vec<ApiMount>> {
        self.run(move |s| s.prepare(&key, &parent, labels(l)))
            .await
            .map(api_mounts)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        l: HashMap<String, String>,
    ) -> Result<Vec<ApiMount>> {
        self.run(move |s| s.view(&key, &parent, labels(l)))
            .await
            .map(api_mounts)
    }

    async fn commit(&self, name: String, key: String, l: HashMap<String, String>) -> Result<()> {
        self.run(move |s| s.commit(&name, &key, labels(l))).await
    }

    async fn remove(&self, key: String) -> Result<()> {
        self.run(move |s| s.remove(&key)).await
    }

    async fn clear(&self) -> Result<()> {
        self.run(|s| s.cleanup().map(drop)).await
    }

    type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<ApiInfo>>>;

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<Self::InfoStream> {
        let v = self.run(move |s| s.walk(&filters)).await?;
        Ok(tokio_stream::iter(
            v.into_iter().map(|i| Ok(api_info(i))).collect::<Vec<_>>(),
        ))
    }
}

/// How long requests in flight get to finish after SIGINT or SIGTERM.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serve `snapshotter` on the Unix socket `address` until SIGINT or SIGTERM. A stale
/// socket file is replaced; a socket another process answers on is refused.
pub async fn serve(snapshotter: Snapshotter, address: &Path) -> Result<()> {
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create socket directory", dir, e))?;
    }
    if std::fs::symlink_metadata(address).is_ok() {
        if std::os::unix::net::UnixStream::connect(address).is_ok() {
            return Err(Error::AlreadyExists(format!(
                "socket {}: another process serves it",
                address.display()
            )));
        }
        std::fs::remove_file(address).map_err(|e| Error::io("remove stale socket", address, e))?;
    }
    let listener =
        tokio::net::UnixListener::bind(address).map_err(|e| Error::io("listen on", address, e))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tracing::info!(
        "serving containerd's snapshots API on {}",
        address.display()
    );
    let signalled = async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! {
                    _ = i.recv() => {}
                    _ = t.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(Service::new(
            snapshotter,
        ))))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        });
    tokio::pin!(server);
    let r = tokio::select! {
        r = &mut server => r,
        () = signalled => {
            tracing::info!("shutting down");
            let _ = stop.send(());
            // containerd keeps its connection open: give requests in flight a moment,
            // then stop without waiting for the connection to close.
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    let _ = std::fs::remove_file(address);
    r.map_err(|e| Error::io("serve", address, std::io::Error::other(e)))
}

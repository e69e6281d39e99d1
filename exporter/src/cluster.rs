//! [`ClusterSource`]: a running NEO cluster, read through the Rust client
//! (`neo_server::client`) as NEO's own client iterates it: tids from
//! `AskTIDsFrom` on every partition, metadata from
//! `AskTransactionInformation`, each record from `AskObject` at its serial.
//!
//! The transactions of a batch are read concurrently (one task each on a
//! tokio runtime), so requests to different storage nodes overlap.
//!
//! Records are read with [`Client::load_record`]: the data as stored
//! (decompressed later by the export's own thread) and `data_serial`, also
//! for a record without data, so an undo pointing at a deletion keeps its
//! backpointer exactly as the offline sources give it.

use fsformat::Tid;
use neo_proto::ErrorCode;
use neo_server::client::{Client, ClientConfig, ClientError};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use crate::source::{Source, SourceError, SourceRecord, SourceTxn};

/// NEO's `--ca/--cert/--key` options of the client-side commands
/// (`neo-export -m`, `neomigrate`): all three for TLS, or none.
#[derive(clap::Args, Debug, Default)]
pub struct TlsArgs {
    /// TLS: certificate authority in PEM format (with --cert and --key).
    #[arg(long, requires_all = ["cert", "key"])]
    pub ca: Option<std::path::PathBuf>,
    /// TLS: this node's certificate in PEM format.
    #[arg(long, requires_all = ["ca", "key"])]
    pub cert: Option<std::path::PathBuf>,
    /// TLS: this node's private key in PEM format.
    #[arg(long, requires_all = ["ca", "cert"])]
    pub key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// Sets `cfg.tls` from the options when they are given.
    pub fn apply(&self, cfg: &mut ClientConfig) -> Result<(), String> {
        if let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) {
            cfg.tls = Some(
                neo_proto::tls::TlsConfig::from_pem_files(ca, cert, key)
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(())
    }
}

/// A NEO cluster, read through the client.
#[derive(Debug)]
pub struct ClusterSource {
    rt: Runtime,
    client: Client,
}

fn client_err(context: String) -> impl FnOnce(ClientError) -> SourceError {
    move |e| SourceError::Cluster {
        context,
        error: Box::new(e),
    }
}

impl ClusterSource {
    /// Connects to the cluster (waits until it is operational, up to the
    /// configuration's connect timeout).
    pub fn connect(mut cfg: ClientConfig) -> Result<ClusterSource, SourceError> {
        cfg.read_only = true;
        // Many loads in flight: polling for each answer would only burn the
        // CPU the decoding needs.
        cfg.busy_poll = std::time::Duration::ZERO;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| SourceError::Inconsistent {
                what: format!("cannot start the client runtime: {e}"),
            })?;
        let what = format!("connecting to cluster {:?}", cfg.cluster);
        let client = rt
            .block_on(Client::connect(cfg))
            .map_err(client_err(what))?;
        Ok(ClusterSource { rt, client })
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl Drop for ClusterSource {
    fn drop(&mut self) {
        let c = self.client.clone();
        self.rt.block_on(async move { c.close().await });
    }
}

/// Transaction `tid` with its records, through `client`.
async fn read_txn(client: Client, tid: Tid) -> Result<Option<SourceTxn>, SourceError> {
    let info = match client.transaction_info(tid).await {
        Ok(i) => i,
        Err(ClientError::Remote {
            code: ErrorCode::TidNotFound,
            ..
        }) => return Ok(None),
        Err(e) => return Err(client_err(format!("reading transaction {tid}"))(e)),
    };
    let mut records = Vec::with_capacity(info.oids.len());
    for &oid in &info.oids {
        // Compressed as stored: the export's own thread decompresses.
        let (data, value_tid) = match client.load_record(oid, tid).await {
            Ok(r) => (r.data, r.data_serial),
            // Listed but not written: only checked (checkCurrentSerial).
            Err(ClientError::NotFound { .. }) => continue,
            Err(e) => {
                return Err(client_err(format!(
                    "reading object {oid} of transaction {tid}"
                ))(e))
            }
        };
        records.push(SourceRecord {
            oid,
            data,
            value_tid,
        });
    }
    Ok(Some(SourceTxn {
        tid,
        user: info.user,
        description: info.description,
        extension: info.extension,
        packed: info.packed,
        records,
    }))
}

impl Source for ClusterSource {
    fn tids(&mut self, min: Tid, max: Tid, limit: usize) -> Result<Vec<Tid>, SourceError> {
        if min > max || limit == 0 {
            return Ok(Vec::new());
        }
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        self.rt
            .block_on(self.client.transaction_log(min, max, limit))
            .map_err(client_err(format!("listing transactions from {min}")))
    }

    fn transaction(&mut self, tid: Tid) -> Result<Option<SourceTxn>, SourceError> {
        self.rt.block_on(read_txn(self.client.clone(), tid))
    }

    fn transactions(
        &mut self,
        min: Tid,
        max: Tid,
        limit: usize,
    ) -> Result<Vec<SourceTxn>, SourceError> {
        let tids = self.tids(min, max, limit)?;
        let client = self.client.clone();
        self.rt.block_on(async move {
            let mut set = JoinSet::new();
            for (i, &tid) in tids.iter().enumerate() {
                let c = client.clone();
                set.spawn(async move { (i, read_txn(c, tid).await) });
            }
            let mut out: Vec<Option<SourceTxn>> = vec![None; tids.len()];
            while let Some(r) = set.join_next().await {
                let (i, txn) = r.map_err(|e| SourceError::Inconsistent {
                    what: format!("a reading task failed: {e}"),
                })?;
                let txn = txn?.ok_or_else(|| SourceError::Inconsistent {
                    what: format!("transaction {} is listed but cannot be read", tids[i]),
                })?;
                out[i] = Some(txn);
            }
            Ok(out.into_iter().flatten().collect())
        })
    }
}

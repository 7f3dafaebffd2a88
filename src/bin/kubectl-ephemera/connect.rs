//! A client from kubectl's connection flags.

use ephemera::plugin::cli::KubeFlags;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::Error;

pub struct Connection {
    pub client: Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
}

pub async fn connect(flags: &KubeFlags) -> Result<Connection, Error> {
    let options = KubeConfigOptions { context: flags.context.clone(), ..Default::default() };
    let mut config = match &flags.kubeconfig {
        Some(path) => Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?,
        None if flags.context.is_some() => Config::from_kubeconfig(&options).await?,
        None => Config::infer().await?,
    };
    if let Some(user) = &flags.as_user {
        config.auth_info.impersonate = Some(user.clone());
    }
    if !flags.as_group.is_empty() {
        config.auth_info.impersonate_groups = Some(flags.as_group.clone());
    }
    if let Some(uid) = &flags.as_uid {
        config.auth_info.impersonate_uid = Some(uid.clone());
    }
    // kubectl's --request-timeout=0 means no limit.
    if let Some(timeout) = flags.request_timeout.filter(|t| !t.is_zero()) {
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        // Counted from each request, not from when its pooled connection last read.
        config.reset_reader_on_write = true;
    }
    let namespace = flags.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    Ok(Connection { client: Client::try_from(config)?, namespace })
}

//! Key Vault clients per identity, shared by every read with the same identity (one Entra
//! token cache and one challenge cache each).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keyvault::{Cloud, KeyVaultClient, Transport};

use crate::identity::{HandedInToken, Identity, LocalEndpoints};

/// Clients kept; beyond this the pool starts over (tokens are fetched again).
const MAX_CLIENTS: usize = 4096;

struct Pooled {
    client: KeyVaultClient,
    /// Workload identity with handed-in tokens: where the newest token goes.
    handed_in: Option<Arc<HandedInToken>>,
}

/// Clients by identity key ([`Identity::cache_key`]).
pub struct ClientPool {
    transport: Transport,
    endpoints: LocalEndpoints,
    clients: Mutex<HashMap<String, Pooled>>,
}

impl ClientPool {
    pub fn new(transport: Transport, endpoints: LocalEndpoints) -> Self {
        Self {
            transport,
            endpoints,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The client for `identity` in `cloud`, and the identity's key (for caches in front of
    /// the vault). A handed-in workload identity token replaces the pooled client's one.
    pub fn client(
        &self,
        identity: &Identity,
        cloud: &Cloud,
    ) -> Result<(KeyVaultClient, String), keyvault::Error> {
        let key = identity.cache_key(&cloud.authority_host);
        let mut pool = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pool.get(&key) {
            if let (Some(h), Identity::Workload { token, .. }) = (&p.handed_in, identity) {
                h.set_token(token);
            }
            return Ok((p.client.clone(), key));
        }
        let (credential, handed_in) = match identity {
            Identity::Workload {
                tenant,
                client_id,
                token,
                ..
            } => {
                let h = Arc::new(HandedInToken::new(
                    &cloud.authority_host,
                    tenant,
                    client_id,
                    token,
                    self.transport.clone(),
                ));
                (h.clone() as Arc<dyn keyvault::TokenCredential>, Some(h))
            }
            _ => (
                identity.credential(cloud, &self.endpoints, &self.transport)?,
                None,
            ),
        };
        let client = KeyVaultClient::with_transport(credential, self.transport.clone());
        if pool.len() >= MAX_CLIENTS {
            pool.clear();
        }
        pool.insert(
            key.clone(),
            Pooled {
                client: client.clone(),
                handed_in,
            },
        );
        Ok((client, key))
    }
}

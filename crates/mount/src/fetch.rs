//! Concurrent, bounded fetching of everything a set of objects needs.

use futures_util::stream::{self, StreamExt, TryStreamExt};
use render::params::ObjectSpec;
use render::render::{needed_fetches, render, ObjectPlan, RenderOptions, Rendered, VaultData};

use crate::{MountError, Source};

/// Concurrent Key Vault requests per mount: a 100-object mount takes two vault round trips,
/// far below Key Vault's 4,000 requests per 10 s per vault.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// Lists versions (history objects) and fetches every needed object, `concurrency` at a time.
/// Identical fetches (two objects naming the same secret) are made once.
pub async fn fetch_all<S: Source>(
    source: &S,
    objects: &[ObjectSpec],
    concurrency: usize,
) -> Result<VaultData, MountError> {
    let concurrency = concurrency.max(1);
    let mut data = VaultData::default();
    let (_, listings) = needed_fetches(objects, &data)?;
    let listed: Vec<_> = stream::iter(listings.into_iter().filter_map(|p| match p {
        ObjectPlan::ListVersions { object_type, name } => Some((object_type, name)),
        ObjectPlan::Fetch(_) => None,
    }))
    .map(|(t, name)| async move {
        let versions = source.versions(t, &name).await?;
        Ok::<_, MountError>(((t, name), versions))
    })
    .buffer_unordered(concurrency)
    .try_collect()
    .await?;
    data.versions.extend(listed);
    let (fetches, _) = needed_fetches(objects, &data)?;
    let fetched: Vec<_> = stream::iter(fetches)
        .map(|key| async move {
            let obj = source.get(&key).await?;
            Ok::<_, MountError>((key, obj))
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    data.objects.extend(fetched);
    Ok(data)
}

/// Fetches and renders: the files and object versions of one mount, or the first error
/// (nothing partial).
pub async fn mount_files<S: Source>(
    source: &S,
    objects: &[ObjectSpec],
    options: &RenderOptions,
    concurrency: usize,
) -> Result<Rendered, MountError> {
    let data = fetch_all(source, objects, concurrency).await?;
    // Rendering (PKCS#12 decoding, chain ordering, hex/base64) is CPU work on vault content:
    // done off the async workers so a large or hostile mount never stalls other requests.
    let objects = objects.to_vec();
    let options = options.clone();
    tokio::task::spawn_blocking(move || render(&objects, &data, &options))
        .await
        .map_err(|_| MountError::Interrupted("rendering"))?
        .map_err(MountError::from)
}

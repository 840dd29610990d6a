//! The S3 client: `object_store`'s builder fed from the environment, the AWS profile files
//! and the config, with timeouts short enough that an unreachable bucket costs a pass
//! seconds, not minutes.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

use super::profile;
use crate::config::upload::ArchiveUrl;

/// Connecting to the bucket gives up after this long (an unreachable host).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request (one part of at most 16 MiB) gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Builds the client for `url`. Credentials: `AWS_*` variables (keys, web identity, ECS),
/// else the profile's keys in `~/.aws/credentials`, else the EC2 instance role. Region:
/// `AWS_REGION`/`AWS_DEFAULT_REGION`, else the profile's, else `us-east-1`. Endpoint:
/// `endpoint` (config), else `AWS_ENDPOINT_URL`; plain http only when the endpoint says so.
pub(crate) fn build(
    url: &ArchiveUrl,
    endpoint: Option<&str>,
) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    // TLS through rustls with ring (the `aws` feature's aws-lc would add minutes of C build
    // on CI's two cores): reqwest wants the provider installed before a client is built.
    // A provider installed already (by us, earlier) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = AmazonS3Builder::from_env().with_bucket_name(&url.bucket);
    let env_set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    let env_credentials = env_set("AWS_ACCESS_KEY_ID")
        || env_set("AWS_WEB_IDENTITY_TOKEN_FILE")
        || env_set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || env_set("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    let env_region = env_set("AWS_REGION") || env_set("AWS_DEFAULT_REGION");
    if !env_credentials || !env_region {
        let p = profile::load(&profile::profile_name());
        if !env_credentials && let (Some(id), Some(secret)) = (p.access_key_id, p.secret_access_key)
        {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
            if let Some(token) = p.session_token {
                b = b.with_token(token);
            }
        }
        if !env_region && let Some(region) = p.region {
            b = b.with_region(region);
        }
    }
    if let Some(e) = endpoint {
        b = b.with_endpoint(e);
    }
    let effective = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
    if effective.is_some_and(|e| e.starts_with("http://")) {
        b = b.with_allow_http(true);
    }
    b.with_config(
        AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
        format!("{}s", CONNECT_TIMEOUT.as_secs()),
    )
    .with_config(
        AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
        format!("{}s", REQUEST_TIMEOUT.as_secs()),
    )
    .with_retry(RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(15),
        ..Default::default()
    })
    .build()
    .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_client_builds_with_the_ring_provider() {
        // reqwest panics at build time when no rustls provider is installed.
        let url = crate::config::upload::parse_archive_url("s3://bkt/p").unwrap();
        assert!(build(&url, Some("https://127.0.0.1:9")).is_ok());
        assert!(build(&url, None).is_ok());
    }
}

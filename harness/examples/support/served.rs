//! The Titanium stand-in services for the load benchmarks: a redis-server and the four services
//! on loopback over a given PostgreSQL, on a runtime of their own.

use anyhow::Context;
use titanium::{RedisServer, Stack, StackOptions};

/// The services, their runtime and their Redis; [`Served::stop`] takes them down in order.
pub(crate) struct Served {
    pub(crate) stack: Stack,
    services: tokio::runtime::Runtime,
    redis: RedisServer,
}

impl Served {
    /// Starts redis-server and the services over `database`. The services get a runtime
    /// (threads) of their own, as they would as a process of their own: the load generator
    /// must not share worker threads with them.
    pub(crate) async fn start(database: tokio_postgres::Config) -> anyhow::Result<Self> {
        let redis = RedisServer::start()
            .await
            .context("starting redis-server")?;
        let services = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("titanium")
            .enable_all()
            .build()
            .context("building the services' runtime")?;
        let options = StackOptions {
            database,
            redis_url: redis.url(),
            db_pool_size: 4,
        };
        let stack = services
            .spawn(Stack::start(options))
            .await?
            .context("starting the services")?;
        Ok(Self {
            stack,
            services,
            redis,
        })
    }

    /// Stops the services, their runtime (without blocking this one) and Redis.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.services.spawn(self.stack.shutdown()).await?;
        self.services.shutdown_background();
        drop(self.redis);
        Ok(())
    }
}

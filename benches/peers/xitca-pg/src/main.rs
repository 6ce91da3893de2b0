//! xitca-pg: the TechEmpower database tests written the way the xitca-web
//! entry writes them (frameworks/Rust/xitca-web in TechEmpower's
//! repository), on the crates.io releases of xitca-web (0.8) and
//! xitca-postgres (0.4). The peer (b) of `benches/pg.py`.
//!
//! As the entry does: one worker thread per CPU, each with its own
//! PostgreSQL connection (no pool) whose driver pipelines every query the
//! worker has in flight; statements prepared once per connection; `/queries`
//! and `/updates` send all their reads before reading any answer; `/updates`
//! writes the batch with one statement, ids sorted; mimalloc. What differs:
//! the entry pins unreleased git revisions of xitca (and of mio), its
//! io_uring build and a sailfish template; this one uses the released
//! crates, tokio's epoll driver, and writes the fortunes page by hand; its
//! batch update binds two arrays (`unnest`) where the entry generates a
//! `VALUES` list per count.
//!
//! Usage: xitca-pg --listen 127.0.0.1:8080 --database-url postgres://...

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::cell::RefCell;
use std::future::IntoFuture;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use xitca_postgres::iter::AsyncLendingIterator;
use xitca_postgres::types::Type;
use xitca_postgres::{Client, Execute, Postgres, Statement};
use xitca_web::handler::handler_service;
use xitca_web::handler::html::Html;
use xitca_web::handler::json::Json;
use xitca_web::handler::state::StateRef;
use xitca_web::handler::uri::UriRef;
use xitca_web::route::get;
use xitca_web::App;

/// A database failure, as the handlers answer it (500).
#[derive(Debug)]
struct DbError(String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

impl From<xitca_postgres::Error> for DbError {
    fn from(error: xitca_postgres::Error) -> Self {
        Self(error.to_string())
    }
}

type Error = DbError;

fn web(error: DbError) -> xitca_web::error::Error {
    xitca_web::error::Error::from(std::io::Error::other(error))
}

#[derive(Serialize)]
struct World {
    id: i32,
    #[serde(rename = "randomNumber")]
    random_number: i32,
}

/// One worker's connection and statements.
struct Db {
    cli: Client,
    world: Statement,
    fortune: Statement,
    update: Statement,
    rng: RefCell<SmallRng>,
}

impl Db {
    async fn connect(url: String) -> Result<Db, Error> {
        let (cli, driver) = Postgres::new(url.as_str()).connect().await?;
        tokio::spawn(driver.into_future());
        let world = Statement::named("SELECT id, randomnumber FROM world WHERE id = $1", &[Type::INT4])
            .execute(&cli)
            .await?
            .leak();
        let fortune = Statement::named("SELECT id, message FROM fortune", &[])
            .execute(&cli)
            .await?
            .leak();
        let update = Statement::named(
            "UPDATE world SET randomnumber = v.r FROM \
             (SELECT unnest($1::int4[]) AS i, unnest($2::int4[]) AS r) AS v WHERE world.id = v.i",
            &[Type::INT4_ARRAY, Type::INT4_ARRAY],
        )
        .execute(&cli)
        .await?
        .leak();
        Ok(Db {
            cli,
            world,
            fortune,
            update,
            rng: RefCell::new(SmallRng::from_rng(&mut rand::rng())),
        })
    }

    fn id(&self) -> i32 {
        self.rng.borrow_mut().random_range(1..=10_000)
    }

    async fn worlds(&self, count: usize) -> Result<Vec<World>, Error> {
        // Every read goes out before any answer is read: one pipelined burst.
        let mut streams = Vec::with_capacity(count);
        for _ in 0..count {
            streams.push(self.world.bind([self.id()]).query(&self.cli).await?);
        }
        let mut worlds = Vec::with_capacity(count);
        for mut stream in streams {
            let row = stream
                .try_next()
                .await?
                .ok_or_else(|| DbError("no such world".into()))?;
            worlds.push(World {
                id: row.get(0),
                random_number: row.get(1),
            });
        }
        Ok(worlds)
    }
}

fn count(query: Option<&str>) -> usize {
    query
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("queries=")))
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or(1)
        .clamp(1, 500) as usize
}

async fn db(StateRef(db): StateRef<'_, Db>) -> Result<Json<World>, xitca_web::error::Error> {
    let mut worlds = db.worlds(1).await.map_err(web)?;
    Ok(Json(worlds.pop().expect("one")))
}

async fn queries(
    StateRef(db): StateRef<'_, Db>,
    UriRef(uri): UriRef<'_>,
) -> Result<Json<Vec<World>>, xitca_web::error::Error> {
    let worlds = db
        .worlds(count(uri.query()))
        .await
        .map_err(web)?;
    Ok(Json(worlds))
}

async fn updates(
    StateRef(db): StateRef<'_, Db>,
    UriRef(uri): UriRef<'_>,
) -> Result<Json<Vec<World>>, xitca_web::error::Error> {
    let run = async {
        let n = count(uri.query());
        let mut worlds = db.worlds(n).await?;
        for world in &mut worlds {
            world.random_number = db.id();
        }
        let mut sorted: Vec<(i32, i32)> = worlds.iter().map(|w| (w.id, w.random_number)).collect();
        sorted.sort_unstable();
        sorted.dedup_by_key(|row| row.0);
        for world in &mut worlds {
            if let Ok(i) = sorted.binary_search_by_key(&world.id, |row| row.0) {
                world.random_number = sorted[i].1;
            }
        }
        let ids: Vec<i32> = sorted.iter().map(|r| r.0).collect();
        let numbers: Vec<i32> = sorted.iter().map(|r| r.1).collect();
        db.update
            .bind_dyn(&[&ids, &numbers])
            .execute(&db.cli)
            .await?;
        Ok::<_, Error>(worlds)
    };
    Ok(Json(run.await.map_err(web)?))
}

async fn fortunes(StateRef(db): StateRef<'_, Db>) -> Result<Html<String>, xitca_web::error::Error> {
    let run = async {
        let mut rows = Vec::with_capacity(16);
        let mut stream = db.fortune.bind::<[i32; 0]>([]).query(&db.cli).await?;
        while let Some(row) = stream.try_next().await? {
            rows.push((row.get::<i32>(0), row.get::<String>(1)));
        }
        Ok::<_, Error>(rows)
    };
    let mut rows = run.await.map_err(web)?;
    rows.push((0, "Additional fortune added at request time.".into()));
    rows.sort_by(|a, b| a.1.cmp(&b.1));
    let mut html = String::with_capacity(2048);
    html.push_str("<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table><tr><th>id</th><th>message</th></tr>");
    for (id, message) in &rows {
        html.push_str("<tr><td>");
        html.push_str(&id.to_string());
        html.push_str("</td><td>");
        for c in message.chars() {
            match c {
                '&' => html.push_str("&amp;"),
                '<' => html.push_str("&lt;"),
                '>' => html.push_str("&gt;"),
                '"' => html.push_str("&quot;"),
                '\'' => html.push_str("&#39;"),
                c => html.push(c),
            }
        }
        html.push_str("</td></tr>");
    }
    html.push_str("</table></body></html>");
    Ok(Html(html))
}

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args();
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
    }
    None
}

fn main() -> std::io::Result<()> {
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:8080".into());
    let url = arg("--database-url")
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/percore_bench".into());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("xitca-pg listening on http://{listen}");
    App::new()
        .with_async_state(move || Db::connect(url.clone()))
        .at("/db", get(handler_service(db)))
        .at("/queries", get(handler_service(queries)))
        .at("/updates", get(handler_service(updates)))
        .at("/fortunes", get(handler_service(fortunes)))
        .serve()
        .worker_threads(workers)
        .bind(listen)?
        .run()
        .wait()
}

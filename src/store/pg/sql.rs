//! The SQL percore runs on a PostgreSQL shard: its schema, the functions that make conditional writes one round trip, and the prepared statements.
//!
//! Documents live in `percore_documents` with the body as `json`, not
//! `jsonb`: `json` keeps the exact bytes a client stored (key order,
//! numbers as written), so an answer, its ETag and its `?fields=`
//! projection are the same as on the embedded store, and a write costs no
//! conversion; users still query it with `->`, `->>` and `json_*`
//! functions, or add an expression index. Keys sort bytewise (`COLLATE
//! "C"`), the order scans page in. Every write records the key it changed
//! in `percore_changes`, in the writing transaction, with the transaction's
//! id; every node polls it ([`POLL`]) and drops those keys from its cache
//! partition. (`NOTIFY` was measured first: it takes a database-wide lock
//! from before the commit until after its WAL flush, so notifying writes
//! cannot share an fsync; 4.0k against 11k upserts/s here, README.)

/// How long a change stays in `percore_changes`; a node that has not polled
/// for half of it forgets its cache partition.
pub const CHANGES_KEPT_SECS: u64 = 60;

/// Creates what is missing, under a transaction-scoped advisory lock so
/// nodes starting together do not race on the catalog. Safe to run again.
pub const SCHEMA: &str = r#"
SELECT pg_advisory_xact_lock(7303145601);
CREATE TABLE IF NOT EXISTS percore_documents (
    collection text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    body json NOT NULL,
    PRIMARY KEY (collection, key)
);
CREATE SEQUENCE IF NOT EXISTS percore_version;
CREATE TABLE IF NOT EXISTS world (
    id integer PRIMARY KEY,
    randomnumber integer NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS fortune (
    id integer PRIMARY KEY,
    message varchar(2048) NOT NULL
);
CREATE OR REPLACE FUNCTION percore_allows(cur bigint, im int, imv bigint[], inm int, inmv bigint[])
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT NOT (
        (im = 1 AND cur IS NULL)
        OR (im = 2 AND (cur IS NULL OR NOT cur = ANY(imv)))
        OR (inm = 1 AND cur IS NOT NULL)
        OR (inm = 2 AND cur IS NOT NULL AND cur = ANY(inmv))
    )
$$;
CREATE TABLE IF NOT EXISTS percore_changes (
    txid bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint,
    writer integer NOT NULL DEFAULT pg_backend_pid(),
    collection text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS percore_changes_txid ON percore_changes (txid);
CREATE OR REPLACE FUNCTION percore_changed(c text, k text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO percore_changes (collection, key) VALUES (c, k)
$$;
CREATE OR REPLACE FUNCTION percore_put(c text, k text, b json, im int, imv bigint[], inm int, inmv bigint[])
RETURNS TABLE (status int, version bigint, created boolean) LANGUAGE plpgsql AS $$
DECLARE cur bigint; nv bigint;
BEGIN
    LOOP
        SELECT d.version INTO cur FROM percore_documents d
            WHERE d.collection = c AND d.key = k FOR UPDATE;
        IF NOT percore_allows(cur, im, imv, inm, inmv) THEN
            RETURN QUERY SELECT 1, cur, false; RETURN;
        END IF;
        nv := nextval('percore_version');
        IF cur IS NULL THEN
            INSERT INTO percore_documents AS d (collection, key, version, body)
                VALUES (c, k, nv, b) ON CONFLICT DO NOTHING;
            IF FOUND THEN
                PERFORM percore_changed(c, k);
                RETURN QUERY SELECT 0, nv, true; RETURN;
            END IF;
            -- Created by another writer meanwhile: decide again under its row lock.
        ELSE
            UPDATE percore_documents d SET version = nv, body = b
                WHERE d.collection = c AND d.key = k;
            PERFORM percore_changed(c, k);
            RETURN QUERY SELECT 0, nv, false; RETURN;
        END IF;
    END LOOP;
END
$$;
CREATE OR REPLACE FUNCTION percore_write(ops int[], cs text[], ks text[], bs json[],
    ims int[], imvs text[], inms int[], inmvs text[])
RETURNS TABLE (n int, status int, version bigint, created boolean, error text) LANGUAGE plpgsql AS $$
DECLARE i int; st int; ver bigint; cr boolean;
BEGIN
    FOR i IN 1 .. coalesce(array_length(ops, 1), 0) LOOP
        BEGIN
            IF ops[i] = 1 THEN
                SELECT p.status, p.version, p.created INTO st, ver, cr FROM percore_put(cs[i], ks[i], bs[i],
                    ims[i], string_to_array(imvs[i], ',')::bigint[],
                    inms[i], string_to_array(inmvs[i], ',')::bigint[]) p;
            ELSE
                SELECT d.status, d.version, false INTO st, ver, cr FROM percore_delete(cs[i], ks[i],
                    ims[i], string_to_array(imvs[i], ',')::bigint[],
                    inms[i], string_to_array(inmvs[i], ',')::bigint[]) d;
            END IF;
            RETURN QUERY SELECT i, st, ver, cr, NULL::text;
        EXCEPTION WHEN OTHERS THEN
            -- This write alone fails; the others of the batch commit.
            RETURN QUERY SELECT i, 3, NULL::bigint, false, SQLSTATE || ': ' || SQLERRM;
        END;
    END LOOP;
END
$$;
CREATE OR REPLACE FUNCTION percore_delete(c text, k text, im int, imv bigint[], inm int, inmv bigint[])
RETURNS TABLE (status int, version bigint) LANGUAGE plpgsql AS $$
DECLARE cur bigint;
BEGIN
    SELECT d.version INTO cur FROM percore_documents d
        WHERE d.collection = c AND d.key = k FOR UPDATE;
    IF NOT percore_allows(cur, im, imv, inm, inmv) THEN
        RETURN QUERY SELECT 1, cur; RETURN;
    END IF;
    IF cur IS NULL THEN
        RETURN QUERY SELECT 2, NULL::bigint; RETURN;
    END IF;
    DELETE FROM percore_documents d WHERE d.collection = c AND d.key = k;
    PERFORM percore_changed(c, k);
    RETURN QUERY SELECT 0, cur;
END
$$;
"#;

/// PostgreSQL type OIDs of the parameters percore binds.
pub mod oid {
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const INT4_ARRAY: u32 = 1007;
    pub const INT8_ARRAY: u32 = 1016;
    pub const TEXT_ARRAY: u32 = 1009;
    pub const JSON_ARRAY: u32 = 199;
}

/// A statement prepared on every shard connection once it is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statement {
    /// Short: PostgreSQL copies and hashes the name at every Bind
    /// (`benches/pg_callgrind.py` counted 11 characters against 2 at about
    /// 110 more instructions per query). `pg_prepared_statements` shows the text.
    pub name: &'static str,
    pub sql: &'static str,
    pub params: &'static [u32],
}

pub const GET: Statement = Statement {
    name: "pc0",
    sql: "SELECT version, body FROM percore_documents WHERE collection = $1 AND key = $2",
    params: &[oid::TEXT, oid::TEXT],
};

/// Every document write a core has for a shard in one loop turn, in one
/// statement and one transaction: one commit (one WAL flush) for the lot,
/// as the embedded store's group commit. Each write runs in its own
/// subtransaction, so one that fails (status 3) fails alone. Rows: the
/// write's 1-based index, its status (0 done, 1 precondition failed, 2
/// missing, 3 error), the version, whether it created the document, the error.
pub const WRITE: Statement = Statement {
    name: "pc1",
    sql: "SELECT n, status, version, created, error FROM percore_write($1, $2, $3, $4, $5, $6, $7, $8)",
    params: &[
        oid::INT4_ARRAY,
        oid::TEXT_ARRAY,
        oid::TEXT_ARRAY,
        oid::JSON_ARRAY,
        oid::INT4_ARRAY,
        oid::TEXT_ARRAY,
        oid::INT4_ARRAY,
        oid::TEXT_ARRAY,
    ],
};

pub const SCAN: Statement = Statement {
    name: "pc2",
    sql: "SELECT key, version, body FROM percore_documents \
          WHERE collection = $1 AND key > $2 ORDER BY key LIMIT $3",
    params: &[oid::TEXT, oid::TEXT, oid::INT8],
};

pub const WORLD: Statement = Statement {
    name: "pc3",
    sql: "SELECT id, randomnumber FROM world WHERE id = $1",
    params: &[oid::INT4],
};

pub const FORTUNES: Statement = Statement {
    name: "pc4",
    sql: "SELECT id, message FROM fortune",
    params: &[],
};

/// The TechEmpower `/updates` batch: one statement, ids sorted by the
/// caller so concurrent batches take their row locks in the same order.
pub const UPDATE_WORLDS: Statement = Statement {
    name: "pc5",
    sql: "UPDATE world SET randomnumber = v.r \
          FROM (SELECT unnest($1::int4[]) AS i, unnest($2::int4[]) AS r) AS v \
          WHERE world.id = v.i",
    params: &[oid::INT4_ARRAY, oid::INT4_ARRAY],
};

/// Keys other nodes changed in transactions from `$1` on (the horizon of
/// the previous poll), and this poll's horizon: the oldest transaction
/// still running, first, with no key. Every transaction that commits after
/// this statement's snapshot has an id at or above that horizon, so the
/// next poll sees it; one that committed before is visible now.
pub const POLL: Statement = Statement {
    name: "pc6",
    sql: "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, NULL::text, NULL::text           UNION ALL           SELECT txid, collection, key FROM percore_changes           WHERE txid >= $1 AND writer <> pg_backend_pid()",
    params: &[oid::INT8],
};

/// Forgets changes older than [`CHANGES_KEPT_SECS`].
pub const FORGET_CHANGES: Statement = Statement {
    name: "pc7",
    sql: "DELETE FROM percore_changes WHERE at < now() - make_interval(secs => $1)",
    params: &[oid::INT8],
};

/// The horizon a new connection starts polling from ([`POLL`]'s first column).
pub const HORIZON: &str = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text";

/// Every statement, prepared on each connection.
pub const STATEMENTS: [Statement; 8] = [
    GET,
    WRITE,
    SCAN,
    WORLD,
    FORTUNES,
    UPDATE_WORLDS,
    POLL,
    FORGET_CHANGES,
];

/// The TechEmpower rows this shard holds that are missing, written without
/// touching a row that exists: the World ids the shard map gives this
/// shard, and (on shard 0) the twelve fortunes.
pub fn seed(world_ids: &[u32], fortunes: bool) -> String {
    let mut sql = String::with_capacity(world_ids.len() * 6 + 2048);
    if !world_ids.is_empty() {
        sql.push_str(
            "INSERT INTO world (id, randomnumber) \
             SELECT i, 1 + floor(random() * 10000)::int FROM unnest('{",
        );
        for (n, id) in world_ids.iter().enumerate() {
            if n > 0 {
                sql.push(',');
            }
            sql.push_str(itoa::Buffer::new().format(*id));
        }
        sql.push_str("}'::int4[]) AS i ON CONFLICT DO NOTHING;");
    }
    if fortunes {
        sql.push_str("INSERT INTO fortune (id, message) VALUES ");
        for (n, message) in crate::store::seed::FORTUNES.iter().enumerate() {
            if n > 0 {
                sql.push(',');
            }
            sql.push('(');
            sql.push_str(itoa::Buffer::new().format(n + 1));
            sql.push_str(",'");
            sql.push_str(&message.replace('\'', "''"));
            sql.push_str("')");
        }
        sql.push_str(" ON CONFLICT DO NOTHING;");
    }
    sql
}

#!/usr/bin/env bash
# What storing document bodies as `json` (percore's choice) costs against `jsonb`,
# measured with pgbench on the machine's PostgreSQL (127.0.0.1:5432, user postgres):
# a point read returning the body, and an upsert of a ~300-byte document, each as
# a prepared statement, rounds interleaved. Prints transactions/s per case and the
# json/jsonb ratio. Writes run with synchronous_commit=off so they measure the
# conversion and storage, not the WAL flush (which both pay alike). Usage: benches/pg_json_vs_jsonb.sh [SECONDS=10] [ROUNDS=3]
set -euo pipefail
secs=${1:-10}
rounds=${2:-3}
db=pc_json_bench
psql=(psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q)
"${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
"${psql[@]}" -d $db <<'SQL'
CREATE TABLE d_json  (key text COLLATE "C" PRIMARY KEY, version bigint NOT NULL, body json NOT NULL);
CREATE TABLE d_jsonb (key text COLLATE "C" PRIMARY KEY, version bigint NOT NULL, body jsonb NOT NULL);
INSERT INTO d_json SELECT 'k' || i, i, json_build_object('id', i, 'name', 'product ' || i, 'price', i * 1.5,
  'tags', json_build_array('a', 'b', 'c'), 'dims', json_build_object('w', 10, 'h', 20, 'd', 30),
  'description', repeat('lorem ipsum ', 12)) FROM generate_series(1, 100000) i;
INSERT INTO d_jsonb SELECT key, version, body::jsonb FROM d_json;
VACUUM ANALYZE;
SQL
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; "${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS '$db' WITH (FORCE)"' EXIT
doc='{"id":1,"name":"product 1","price":1.5,"tags":["a","b","c"],"dims":{"w":10,"h":20,"d":30},"description":"lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum "}'
for t in json jsonb; do
  printf '\\set k random(1, 100000)\nSELECT body FROM d_%s WHERE key = '"'"'k'"'"' || :k;\n' "$t" > "$tmp/read-$t.sql"
  printf '\\set k random(1, 100000)\nINSERT INTO d_%s (key, version, body) VALUES ('"'"'k'"'"' || :k, 1, '"'"'%s'"'"') ON CONFLICT (key) DO UPDATE SET version = d_%s.version + 1, body = EXCLUDED.body;\n' "$t" "$doc" "$t" > "$tmp/write-$t.sql"
done
declare -A sum
for r in $(seq "$rounds"); do
  for op in read write; do
    for t in json jsonb; do
      tps=$(PGOPTIONS='-c synchronous_commit=off' taskset -c 0 pgbench -h 127.0.0.1 -U postgres -n -M prepared -c 8 -j 1 -T "$secs" -f "$tmp/$op-$t.sql" $db 2>/dev/null \
        | awk '/^tps/ {print $3}')
      echo "round $r $op $t: $tps tps"
      sum[$op-$t]=$(python3 -c "print(${sum[$op-$t]:-0} + $tps)")
    done
  done
done
for op in read write; do
  python3 -c "j=${sum[$op-json]}/$rounds; b=${sum[$op-jsonb]}/$rounds; print(f'$op: json {j:,.0f} tps, jsonb {b:,.0f} tps, json/jsonb {j/b:.2f}x')"
done

// Rows from one read-only SQL statement (POST /v1/sql), with the statement itself and a link
// that opens it on the SQL page: every drill-down says where its rows come from.
import { Link } from "react-router-dom";
import type { SqlResponse } from "../api/types";
import { useAuth } from "../auth";
import { useAsync } from "../lib/useAsync";
import { Loading, ProblemMessage } from "./ProblemMessage";

export function cell(value: unknown): string {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) return value.map(cell).join(value.every((v) => typeof v === "string" && v.length > 30) ? "\n" : " ");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function RowsTable({ result, caption }: { result: SqlResponse; caption: string }) {
  return (
    <div className="table-scroll" tabIndex={0} role="region" aria-label={caption}>
      <table className="rows">
        <caption>{caption} ({result.row_count}{result.truncated ? "+, cut" : ""} rows)</caption>
        <thead>
          <tr>{result.columns.map((c) => <th key={c.name} scope="col">{c.name}</th>)}</tr>
        </thead>
        <tbody>
          {result.rows.map((row, i) => (
            <tr key={i}>{row.map((v, j) => <td key={j}>{cell(v)}</td>)}</tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function SqlTable({ sql, caption, maxRows = 200 }: { sql: string; caption: string; maxRows?: number }) {
  const { call } = useAuth();
  const loaded = useAsync((signal) => call<SqlResponse>("/v1/sql", { body: { sql, max_rows: maxRows }, signal }), [sql, maxRows, call]);
  return (
    <section className="sql-table" aria-label={caption}>
      {loaded.state === "loading" ? <Loading what={caption.toLowerCase()} /> : null}
      {loaded.state === "failed" ? <ProblemMessage problem={loaded.problem} context={caption} /> : null}
      {loaded.state === "done" ? <RowsTable result={loaded.value} caption={caption} /> : null}
      <details>
        <summary>SQL of “{caption}”</summary>
        <pre className="sql">{sql}</pre>
        <Link to={`/sql?q=${encodeURIComponent(sql)}`}>Open in the SQL page</Link>
      </details>
    </section>
  );
}

// `/sql?q=…`: one read-only statement over the lake (POST /v1/sql) and its rows. The
// drill-downs link here with the statement that shows their rows.
import { useState, type FormEvent } from "react";
import { useSearchParams } from "react-router-dom";

import type { Problem, SqlResponse } from "../api/types";
import { useAuth } from "../auth";
import { Loading, ProblemMessage } from "../components/ProblemMessage";
import { RowsTable } from "../components/SqlTable";
import { useAsync } from "../lib/useAsync";

export function SqlPage() {
  const { call } = useAuth();
  const [search, setSearch] = useSearchParams();
  const statement = search.get("q") ?? "";
  const [text, setText] = useState(statement);
  const run = (event: FormEvent) => {
    event.preventDefault();
    setSearch({ q: text }, { replace: false });
  };
  const loaded = useAsync<SqlResponse | null>(
    (signal) => (statement ? call<SqlResponse>("/v1/sql", { body: { sql: statement, max_rows: 1000 }, signal }) : Promise.resolve(null)),
    [statement, call],
  );
  let problem: Problem | null = null;
  if (loaded.state === "failed") problem = loaded.problem;
  return (
    <section className="panel" aria-labelledby="sql-title">
      <h2 id="sql-title">SQL over the lake</h2>
      <form onSubmit={run}>
        <label htmlFor="sql-text">One read-only statement (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)</label>
        <textarea id="sql-text" rows={6} className="sql" value={text} onChange={(e) => setText(e.target.value)} />
        <button type="submit">Run</button>
      </form>
      {statement && loaded.state === "loading" ? <Loading what="the rows" /> : null}
      {problem ? <ProblemMessage problem={problem} context="SQL" /> : null}
      {loaded.state === "done" && loaded.value ? <RowsTable result={loaded.value} caption="Rows" /> : null}
    </section>
  );
}


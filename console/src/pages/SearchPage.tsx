// `/`: find a transaction by business id, trace id or span id, or the transactions of a
// service; below, the recent failures with their root causes.
import { useState, type FormEvent } from "react";
import { Link, useNavigate, useSearchParams } from "react-router-dom";
import { query } from "../api/client";
import type { Transaction, TransactionPage } from "../api/types";
import { Loading, ProblemMessage } from "../components/ProblemMessage";
import { useAuth } from "../auth";
import { fmtDuration, fmtInstant } from "../lib/format";
import { useAsync } from "../lib/useAsync";

function TransactionTable({ items, caption }: { items: Transaction[]; caption: string }) {
  if (!items.length) return <p>{caption}: none.</p>;
  return (
    <table className="transactions">
      <caption>{caption}</caption>
      <thead>
        <tr>
          <th scope="col">Started</th><th scope="col">Transaction</th><th scope="col">Operation</th>
          <th scope="col">Took</th><th scope="col">Outcome</th><th scope="col">Root cause</th>
        </tr>
      </thead>
      <tbody>
        {items.map((t) => {
          const id = t.business_id ?? t.txn_id ?? t.trace_id;
          const f = t.failure;
          return (
            <tr key={t.trace_id} className={t.failed ? "failed" : ""}>
              <td>{fmtInstant(t.start_ns)}</td>
              <td><Link to={`/transactions/${encodeURIComponent(id)}`}>{id}</Link>{t.concept ? <span className="muted"> {t.concept}</span> : null}</td>
              <td>{t.service}: {t.name}</td>
              <td>{fmtDuration(t.dur_ns)}</td>
              <td>{t.failed ? `failed${f?.failure_kind ? ` (${f.failure_kind})` : ""}${f?.status_message ? `: ${f.status_message}` : ""}` : "ok"}</td>
              <td>{f?.root_cause_kind ? `${f.root_cause_kind.replace(/_/g, " ")}${f.root_cause_delay_ns ? ` (${fmtDuration(f.root_cause_delay_ns)})` : ""}` : "–"}</td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

function Listing({ params, caption }: { params: Record<string, string | number>; caption: string }) {
  const { call } = useAuth();
  const key = JSON.stringify(params);
  const loaded = useAsync((signal) => call<TransactionPage>(`/v1/transactions${query(params)}`, { signal }), [key, call]);
  if (loaded.state === "loading") return <Loading what={caption.toLowerCase()} />;
  if (loaded.state === "failed") return <ProblemMessage problem={loaded.problem} context={caption} />;
  return <TransactionTable items={loaded.value.items} caption={caption} />;
}

export function SearchPage() {
  const navigate = useNavigate();
  const [search] = useSearchParams();
  const service = search.get("service");
  const [text, setText] = useState(service ?? "");
  const [by, setBy] = useState<"transaction" | "service">(service ? "service" : "transaction");
  const submit = (event: FormEvent) => {
    event.preventDefault();
    const q = text.trim();
    if (!q) return;
    if (by === "service") navigate(`/?service=${encodeURIComponent(q)}`);
    else navigate(`/transactions/${encodeURIComponent(q)}`);
  };
  return (
    <>
      <section className="panel" aria-labelledby="search-title">
        <h2 id="search-title">Find a transaction</h2>
        <form className="search" onSubmit={submit} role="search">
          <label htmlFor="search-text">Business id, trace id or service</label>
          <input id="search-text" value={text} onChange={(e) => setText(e.target.value)} placeholder="PAY-848477-00013" autoFocus />
          <fieldset className="inline">
            <legend>Search by</legend>
            <label><input type="radio" name="by" checked={by === "transaction"} onChange={() => setBy("transaction")} /> business id, trace id or span id</label>
            <label><input type="radio" name="by" checked={by === "service"} onChange={() => setBy("service")} /> service</label>
          </fieldset>
          <button type="submit">Search</button>
        </form>
      </section>
      {service ? (
        <section className="panel" aria-labelledby="service-title">
          <h2 id="service-title">Transactions through {service}</h2>
          <Listing params={{ service, order: "desc", limit: 50 }} caption={`Latest transactions with a span of ${service}`} />
        </section>
      ) : null}
      <section className="panel" aria-labelledby="failures-title">
        <h2 id="failures-title">Recent failures</h2>
        <Listing params={{ status: "failed", order: "desc", limit: 25 }} caption="The latest failed transactions and their root causes" />
      </section>
    </>
  );
}

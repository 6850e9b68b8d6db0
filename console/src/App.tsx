// Routes (deep links: the server answers index.html for any path outside the API):
//   /                      search, recent failures          /live          the live stream
//   /transactions/<id>     the explanation                  /sql?q=…       SQL over the lake
//   /replays/<job>         a replay's report                /replays/new?… launch a replay
import { BrowserRouter, Link, NavLink, Route, Routes, useLocation } from "react-router-dom";
import { useAuth } from "./auth";
import { ErrorBoundary } from "./components/ErrorBoundary";
import { Loading, ProblemMessage } from "./components/ProblemMessage";
import { TokenPrompt } from "./components/TokenPrompt";
import { LivePage } from "./pages/LivePage";
import { NewReplayPage, ReplayPage } from "./pages/ReplayPage";
import { SearchPage } from "./pages/SearchPage";
import { SqlPage } from "./pages/SqlPage";
import { TransactionPage } from "./pages/TransactionPage";

function NotFound() {
  const location = useLocation();
  return (
    <section className="panel" role="alert">
      <h2>No page here</h2>
      <p>The console has no page at <code>{location.pathname}</code>. <Link to="/">Search a transaction</Link>.</p>
    </section>
  );
}

function Who() {
  const { auth, setToken, token } = useAuth();
  if (auth.state !== "ready") return null;
  const { who } = auth;
  return (
    <p className="who" aria-label="Signed in as">
      {who.auth === "none" ? <span className="badge-readonly">read-only (no tokens)</span> : <>token <strong>{who.principal}</strong>: {who.scopes.join(", ")}</>}
      {token ? <button type="button" className="link-button" onClick={() => setToken(null)}>Forget token</button> : null}
    </p>
  );
}

function Pages() {
  const { auth } = useAuth();
  if (auth.state === "checking") return <Loading what="the server's answer" />;
  if (auth.state === "needs-token") return <TokenPrompt />;
  if (auth.state === "error") return <ProblemMessage problem={auth.problem} context="The server" />;
  return (
    <Routes>
      <Route path="/" element={<SearchPage />} />
      <Route path="/transactions/:id" element={<TransactionPage />} />
      <Route path="/replays/new" element={<NewReplayPage />} />
      <Route path="/replays/:job" element={<ReplayPage />} />
      <Route path="/live" element={<LivePage />} />
      <Route path="/sql" element={<SqlPage />} />
      <Route path="*" element={<NotFound />} />
    </Routes>
  );
}

export function Shell() {
  return (
    <>
      <a className="skip" href="#main">Skip to the content</a>
      <header className="top">
        <h1><Link to="/">kprobe</Link></h1>
        <nav aria-label="Sections">
          <NavLink to="/" end>Search</NavLink>
          <NavLink to="/live">Live</NavLink>
          <NavLink to="/sql">SQL</NavLink>
          <a href="/docs">API</a>
        </nav>
        <Who />
      </header>
      <main id="main">
        <ErrorBoundary>
          <Pages />
        </ErrorBoundary>
      </main>
    </>
  );
}

export function App() {
  return (
    <BrowserRouter>
      <Shell />
    </BrowserRouter>
  );
}

// Asks for a bearer token (kprobe serve --new-token NAME --tokens-file F prints one).
import { useState, type FormEvent } from "react";
import { useAuth } from "../auth";
import { ProblemMessage } from "./ProblemMessage";

export function TokenPrompt() {
  const { auth, setToken } = useAuth();
  const [value, setValue] = useState("");
  const submit = (event: FormEvent) => {
    event.preventDefault();
    setToken(value);
  };
  return (
    <section className="panel token-prompt" aria-labelledby="token-title">
      <h2 id="token-title">This server needs a token</h2>
      <p>
        Paste a token created with <code>kprobe serve --new-token NAME --scopes read,replay,payloads --tokens-file FILE</code>.
        It is kept in this tab only (session storage) and sent as a bearer token.
      </p>
      {auth.state === "needs-token" && auth.problem ? <ProblemMessage problem={auth.problem} context="Token refused" /> : null}
      <form onSubmit={submit}>
        <label htmlFor="token-input">Token</label>
        <input id="token-input" type="password" autoComplete="off" value={value}
          onChange={(e) => setValue(e.target.value)} required />
        <button type="submit">Use token</button>
      </form>
    </section>
  );
}

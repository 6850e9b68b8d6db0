// The bearer token: asked for once, kept in this tab's sessionStorage (gone when the tab
// closes), sent on every call. The server says what it allows (GET /v1/whoami): with
// --no-auth it answers without a token and is read-only.
import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";
import { ApiError, callApi, type CallOptions } from "./api/client";
import type { Problem, WhoAmI } from "./api/types";

export const TOKEN_KEY = "kprobe.console.token";

export type AuthState =
  | { state: "checking" }
  | { state: "ready"; who: WhoAmI }
  | { state: "needs-token"; problem: Problem | null }
  | { state: "error"; problem: Problem };

export interface Auth {
  auth: AuthState;
  token: string | null;
  setToken: (token: string | null) => void;
  call: <T>(path: string, options?: Omit<CallOptions, "token">) => Promise<T>;
  can: (scope: "read" | "replay" | "payloads") => boolean;
}

const AuthContext = createContext<Auth | null>(null);

export function storedToken(): string | null {
  try {
    return window.sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function store(token: string | null): void {
  try {
    if (token) window.sessionStorage.setItem(TOKEN_KEY, token);
    else window.sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token lives as long as the page
  }
}

export function AuthProvider({ children }: { children: ReactNode }) {
  const [token, setTokenState] = useState<string | null>(() => storedToken());
  const [auth, setAuth] = useState<AuthState>({ state: "checking" });

  useEffect(() => {
    let live = true;
    setAuth({ state: "checking" });
    callApi<WhoAmI>("/v1/whoami", { token })
      .then((who) => live && setAuth({ state: "ready", who }))
      .catch((error: unknown) => {
        if (!live) return;
        if (error instanceof ApiError && error.status === 401) {
          setAuth({ state: "needs-token", problem: token ? error.problem : null });
        } else if (error instanceof ApiError) {
          setAuth({ state: "error", problem: error.problem });
        } else {
          setAuth({ state: "error", problem: { type: "about:blank", title: "Error", status: 0, detail: String(error) } });
        }
      });
    return () => {
      live = false;
    };
  }, [token]);

  const setToken = useCallback((next: string | null) => {
    const clean = next?.trim() || null;
    store(clean);
    setTokenState(clean);
  }, []);

  const call = useCallback(
    async <T,>(path: string, options: Omit<CallOptions, "token"> = {}): Promise<T> => {
      try {
        return await callApi<T>(path, { ...options, token });
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) {
          setAuth({ state: "needs-token", problem: error.problem });
        }
        throw error;
      }
    },
    [token],
  );

  const can = useCallback(
    (scope: "read" | "replay" | "payloads") => auth.state === "ready" && auth.who.scopes.includes(scope),
    [auth],
  );

  const value = useMemo(() => ({ auth, token, setToken, call, can }), [auth, token, setToken, call, can]);
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth(): Auth {
  const auth = useContext(AuthContext);
  if (auth === null) throw new Error("useAuth outside AuthProvider");
  return auth;
}

/// <reference types="vitest/config" />
// The console is built into dist/ and served by `kprobe serve` (query_api/console.py).
// `--mode bench` builds bench/index.html (tests/bench/bench_console.py) into
// ../build/console-bench instead: the bench page never ships with the console.
import react from "@vitejs/plugin-react";
import { resolve } from "node:path";
import { defineConfig } from "vite";

export default defineConfig(({ mode }) => ({
  plugins: [react()],
  root: mode === "bench" ? resolve(import.meta.dirname, "bench") : import.meta.dirname,
  base: "/",
  build: {
    outDir: mode === "bench" ? resolve(import.meta.dirname, "../build/console-bench") : resolve(import.meta.dirname, "dist"),
    emptyOutDir: true,
    sourcemap: false,
    // no inline <script> or data: modules: the server's CSP allows 'self' only
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    chunkSizeWarningLimit: 1500,
  },
  test: {
    environment: "jsdom",
    include: ["src/**/*.test.{ts,tsx}"],
    setupFiles: ["src/test/setup.ts"],
  },
}));

// The HTTP answers a replayed server wrote, read from the replay report's output text:
// status line, then the body up to the next status line.

export interface HttpAnswer {
  fd: string;
  status: number;
  reason: string;
  body: string;
}

const STATUS_LINE = /HTTP\/1\.[01] (\d{3})([^\r\n]*)\r?\n/g;

export function httpAnswers(fd: string, text: string): HttpAnswer[] {
  const starts: Array<{ index: number; status: number; reason: string }> = [];
  for (const match of text.matchAll(STATUS_LINE)) {
    starts.push({ index: match.index ?? 0, status: Number(match[1]), reason: match[2].trim() });
  }
  return starts.map((start, i) => {
    const end = i + 1 < starts.length ? starts[i + 1].index : text.length;
    const response = text.slice(start.index, end);
    const split = response.search(/\r?\n\r?\n/);
    const body = split >= 0 ? response.slice(split).replace(/^\r?\n\r?\n/, "") : "";
    return { fd, status: start.status, reason: start.reason, body: body.trim() };
  });
}

// The answer naming `needle` (a payment id); without a needle, the last answer written.
export function answerFor(replayed: Record<string, string>, needle: string | null): HttpAnswer | null {
  let found: HttpAnswer | null = null;
  for (const [fd, text] of Object.entries(replayed)) {
    for (const answer of httpAnswers(fd, text)) {
      if (!needle || answer.body.includes(needle)) found = answer;
    }
  }
  return found;
}

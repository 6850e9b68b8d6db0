// The timeline's text alternative: its critical path and every lane, as tables.
import { fmtDuration } from "../lib/format";
import { CATEGORIES, laneSummaries, type TimelineModel } from "../lib/timelineModel";

export function TimelineSummary({ model }: { model: TimelineModel }) {
  const lanes = laneSummaries(model);
  return (
    <div className="timeline-summary" data-testid="timeline-summary">
      <ul className="legend" aria-label="Timeline colours">
        {CATEGORIES.map((c) => (
          <li key={c.name}><span className="swatch" style={{ background: c.colour }} />{c.name}</li>
        ))}
        <li><span className="swatch critical-swatch" />critical path</li>
      </ul>
      <table>
        <caption>Critical path on the timeline</caption>
        <thead><tr><th scope="col">Lane</th><th scope="col">What</th><th scope="col">Starts at</th><th scope="col">Lasts</th></tr></thead>
        <tbody>
          {model.critical.map(({ index, label }) => (
            <tr key={index}>
              <td>{model.lanes[model.lane[index]]}</td>
              <td>{label}</td>
              <td>+{fmtDuration(model.start[index])}</td>
              <td>{fmtDuration(model.end[index] - model.start[index])}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <details>
        <summary>Every lane ({lanes.length})</summary>
        <table>
          <caption>Lanes of the timeline</caption>
          <thead><tr><th scope="col">Lane</th><th scope="col">Events</th><th scope="col">Time covered</th><th scope="col">Longest</th></tr></thead>
          <tbody>
            {lanes.map((lane, l) => {
              let longest = -1;
              for (let i = model.laneStart[l]; i < model.laneStart[l + 1]; i += 1) {
                if (longest < 0 || model.end[i] - model.start[i] > model.end[longest] - model.start[longest]) longest = i;
              }
              return (
                <tr key={lane.lane}>
                  <td>{lane.lane}</td>
                  <td>{lane.events.toLocaleString("en")}</td>
                  <td>{fmtDuration(lane.busyNs)}</td>
                  <td>{longest >= 0 ? model.label[longest] : "–"}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </details>
    </div>
  );
}

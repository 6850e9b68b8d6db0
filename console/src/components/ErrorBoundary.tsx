// A render error shows as a message with the way back, not as a blank page.
import { Component, type ErrorInfo, type ReactNode } from "react";

interface State {
  error: Error | null;
}

export class ErrorBoundary extends Component<{ children: ReactNode }, State> {
  state: State = { error: null };

  static getDerivedStateFromError(error: Error): State {
    return { error };
  }

  componentDidCatch(error: Error, info: ErrorInfo): void {
    console.error("console render error", error, info.componentStack);
  }

  render() {
    if (this.state.error) {
      return (
        <div className="problem" role="alert">
          <strong>The console hit an error</strong>
          <p>{this.state.error.message}</p>
          <p>
            <a href="/">Back to search</a>
          </p>
        </div>
      );
    }
    return this.props.children;
  }
}

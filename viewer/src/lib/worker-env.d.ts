// Vite's worker imports (see vite/client): `import W from "./x.worker?worker&inline"`.
declare module "*?worker&inline" {
  const WorkerConstructor: { new (options?: { name?: string }): Worker };
  export default WorkerConstructor;
}

# The same short trainings with the code before (cbe79b7) and after the refactor, on the same data: metrics must match.
set -u
DATA=/work/main/runs/demo_s15/data
COMMON="--set train.epochs=2 --set train.max_steps_per_epoch=15 --set train.max_minutes=0 --set data.image_size=48 --set data.resize=55 --set train.precision=fp32"
for side in old new; do
  if [ $side = old ]; then ROOT=/tmp/base_query; else ROOT=/work/main; fi
  OUT=/tmp/eq/$side; rm -rf $OUT; mkdir -p $OUT
  cd $ROOT
  for m in embedding cells regression; do
    PYTHONPATH=$ROOT /work/main/.venv/bin/python -m retrieval.cli train $m --data $DATA --config /work/main/configs/scratch_cpu.yaml --out $OUT/$m $COMMON > $OUT/$m.log 2>&1
    PYTHONPATH=$ROOT /work/main/.venv/bin/python -m retrieval.cli evaluate --run $OUT/$m >> $OUT/$m.log 2>&1
    echo "$side $m: done"
  done
done

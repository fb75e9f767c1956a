# Loss against context length; run `gnuplot context.gp` in this folder.
set terminal pngcairo size 900,560 noenhanced
set output 'loss_by_context.png'
set title 'Loss by context length (as in Figures 1 and 9 of the paper)'
set xlabel 'context length T (tokens, bos included)'
set ylabel 'mean NLL over the first T tokens (nats), +- standard error'
set grid
set key outside right
set logscale x 2
set xrange [5461.33:49152]
set xtics ('8K' 8192, '16K' 16384, '32K' 32768)
plot 'context.dat' using 1:2:3 with yerrorlines linewidth 2 title 'swa', \
    'context.dat' using 1:4:5 with yerrorlines linewidth 2 title 'fa', \
    'context.dat' using 1:6:7 with yerrorlines linewidth 2 title 'ttt-e2e'
